"""One backend resolver for every op (xformers style: a priority list, each entry saying why it cannot run).

Ops and their backends, fastest first:

- ``attn_vecmat`` (the gate's attention vector–matrix product): ``triton`` (CUDA, or CPU under
  ``TRITON_INTERPRET=1``), ``torch`` (tiled, every device), ``reference`` (float64, materialising; never
  chosen by ``auto``).
- ``kl_from_hidden`` (the fused LM head + KL of the information term): ``ext`` (the compiled
  ``heta_fast._C`` kernels through torch's dispatcher), ``torch`` (the chunked reference, every device).
- ``score_rows`` (the blocked attention core's fused row passes, :mod:`heta_fast.hf.score_rows`): ``ext``
  (CPU kernels of ``heta_fast._C``), ``torch`` (the op-by-op references, every device).

``backend="auto"`` honours ``HETA_FAST_BACKEND`` when it names a backend of that op (an environment choice
counts as explicit), else takes the first backend that can run. An explicit backend that cannot run raises
``RuntimeError`` with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from . import _ext, _triton


def _triton_reason(device: torch.device) -> str | None:
    reason = _triton.triton_unavailable_reason()
    if reason is not None:
        return reason
    if device.type != "cuda" and not _triton.interpret_mode():
        return "Triton on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton kernels)"
    return None


def _ext_reason(device: torch.device) -> str | None:
    if not _ext.has_ext():
        return f"the compiled extension heta_fast._C is not available ({_ext.load_error()}); {_ext.BUILD_HINT}"
    if device.type == "cuda" and not _ext.cuda_built():
        return ("heta_fast._C was built without CUDA kernels; rebuild with a CUDA build of torch and nvcc on PATH "
                "(HETA_FAST_FORCE_CUDA=1)")
    if device.type not in ("cpu", "cuda"):
        return f"no compiled kernel for device {device}"
    return None


def _ext_cpu_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the compiled extension has CPU kernels only for this op, not {device}"
    return _ext_reason(device)


def _always(_device: torch.device) -> str | None:
    return None


# op -> [(backend, reason it cannot run on a device or None, chosen by "auto")], fastest first.
_OPS: dict[str, list[tuple[str, Callable[[torch.device], str | None], bool]]] = {
    "attn_vecmat": [("triton", _triton_reason, True), ("torch", _always, True), ("reference", _always, False)],
    "kl_from_hidden": [("ext", _ext_reason, True), ("torch", _always, True)],
    "score_rows": [("ext", _ext_cpu_reason, True), ("torch", _always, True)],
}


def backends_of(op: str) -> tuple[str, ...]:
    """The backends ``op`` has (without ``"auto"``)."""
    return tuple(name for name, _, _ in _OPS[op])


def resolve(op: str, backend: str, device: torch.device | str) -> str:
    """The concrete backend of ``op`` for tensors on ``device``.

    Raises:
        ValueError: ``backend`` is not ``"auto"`` or one of the op's backends.
        RuntimeError: an explicit backend (argument or ``HETA_FAST_BACKEND``) that cannot run here.
    """
    entries = _OPS[op]
    names = backends_of(op)
    if backend != "auto" and backend not in names:
        raise ValueError(f"{op}: backend must be one of {('auto', *names)}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        env = os.environ.get("HETA_FAST_BACKEND", "auto").strip().lower()
        if env in names:  # values meant for other ops (e.g. "triton" for the KL op) leave it on auto
            backend = env
    if backend == "auto":
        for name, reason, auto_ok in entries:
            if auto_ok and reason(device) is None:
                return name
        raise RuntimeError(f"{op}: no backend can run on {device}")  # unreachable: torch always runs
    why = dict((name, reason) for name, reason, _ in entries)[backend](device)
    if why is not None:
        raise RuntimeError(f"{op}(backend={backend!r}) cannot run: {why}")
    return backend
