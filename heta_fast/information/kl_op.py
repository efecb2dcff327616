"""Public ops of heta_fast: schemas, fake kernels and backend dispatch.

``heta_fast::kl_from_hidden`` (STYLE §9.2 A, torchao pattern): the schema is defined here in
Python so the op always exists; the float32 chunked torch reference is its
``CompositeExplicitAutograd`` kernel (the fallback on every device); loading ``heta_fast._C``
adds direct ``CPU`` (and ``CUDA`` when built) kernels, which take precedence over it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import kl_op_reference

# FRAGMENT rather than DEF: a DEF library can claim the namespace only once per process, and other
# modules (custom_op-based ops) add their own ops to `heta_fast` as fragments too.
_lib = torch.library.Library("heta_fast", "FRAGMENT")
_lib.define(
    "kl_from_hidden(Tensor hidden, Tensor weight, Tensor base_logp, Tensor? bias=None, "
    "float softcap=0.0, int block_size=4096) -> Tensor"
)
_lib.impl("kl_from_hidden", kl_op_reference.kl_from_hidden_chunked, "CompositeExplicitAutograd")


@torch.library.register_fake("heta_fast::kl_from_hidden")
def _kl_from_hidden_fake(hidden, weight, base_logp, bias=None, softcap=0.0, block_size=4096):
    torch._check(hidden.dim() == 2 and weight.dim() == 2 and base_logp.dim() == 1)
    torch._check(hidden.shape[1] == weight.shape[1])
    torch._check(weight.shape[0] == base_logp.shape[0])
    return hidden.new_empty((hidden.shape[0],), dtype=torch.float32)


# Loaded only after the schema exists; TORCH_LIBRARY_IMPL would also accept the reverse order
# (tests/information/test_kl_op.py checks both), this order just keeps the dependency obvious.
from .. import _ext, backends  # noqa: E402, F401  (_ext: loads the C++ kernels after the schema)

Backend = Literal["auto", "torch", "ext"]


def kl_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    base_logp: Tensor,
    *,
    bias: Tensor | None = None,
    softcap: float = 0.0,
    block_size: int = 4096,
    backend: Backend = "auto",
) -> Tensor:
    """KL information impact of R masked runs, straight from their final hidden states (SPEC §3).

    For each row ``r``: ``z = hidden[r] @ weight.T + bias``, soft-capped as
    ``softcap·tanh(z/softcap)`` when ``softcap > 0``, and

        ``KL_r = Σ_v π_v (base_logp_v − log_softmax(z)_v) = Σπ log π − Σπ z + logsumexp(z)``

    with ``π = exp(base_logp)``, clamped at 0. The vocabulary is streamed in blocks of
    ``block_size`` with an online log-sum-exp, so no ``[R, V]`` matrix is ever materialised (only
    ``[R, block_size]``). Accumulation is float32 (GEMM and per-block reductions), the π-only
    constants and the final combination float64. bf16/fp16 inputs are upcast inside the reduction.
    No autograd: this is an attribution-time (``no_grad``) op.

    Args:
        hidden (Tensor): final-norm hidden states at the prediction position, `[R, d]`, floating.
        weight (Tensor): LM-head weight, `[V, d]`, floating.
        base_logp (Tensor): clean ``log_softmax`` logits, `[V]`, floating (float32 recommended).
        bias (Tensor | None): LM-head bias, `[V]`.
        softcap (float): final-logit soft-cap (Gemma-2); ``0`` disables. Must be finite.
        block_size (int): vocabulary block size, ``>= 1``. Peak extra memory is
            ``4·R·block_size`` bytes.
        backend (str): ``"auto"`` (compiled kernel when loaded, else the torch reference),
            ``"torch"`` (chunked torch reference) or ``"ext"`` (compiled kernel, raising if it is
            unavailable). ``HETA_FAST_BACKEND`` overrides ``"auto"``; ``HETA_FAST_DISABLE_EXT=1``
            forces the reference.

    Returns:
        Tensor: float32 KL divergences, shape `[R]`, on ``hidden``'s device.

    Raises:
        ValueError: on wrong ranks, mismatched ``d``/``V``, non-floating dtypes, mixed devices,
            ``block_size < 1``, a non-finite ``softcap`` or an unknown backend.
        RuntimeError: ``backend="ext"`` while the extension (or its CUDA part) is unavailable.
    """
    kl_op_reference.check_kl_args(hidden, weight, base_logp, bias, softcap, block_size)
    softcap = float(softcap)
    if backends.resolve("kl_from_hidden", backend, hidden.device) == "torch":
        return kl_op_reference.kl_from_hidden_chunked(hidden, weight, base_logp, bias, softcap, block_size)
    # Dispatcher: the C++ CPU/CUDA kernel when registered for this device, else the reference.
    return torch.ops.heta_fast.kl_from_hidden(hidden, weight, base_logp, bias, softcap, block_size)
