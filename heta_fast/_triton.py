"""Guarded Triton import and the switches around it (Fast-LLM style).

``import heta_fast`` must work on a CPU box whose torch wheel did not pull in Triton, so nothing here
raises at import time. The Triton kernels live in the top-level ``kernels/`` folder, which setup.py maps
to ``heta_fast.kernels`` in a built wheel; :func:`load_kernel_module` finds them by file path in an editable
install or a plain checkout. That folder has no ``__init__.py`` on purpose: the top-level name ``kernels``
belongs to Hugging Face's package, which transformers imports (kernels/README.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    _TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install raising something else
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = [
    "interpret_mode",
    "load_kernel_module",
    "skip_autotune",
    "triton_available",
    "triton_importable",
    "triton_unavailable_reason",
]


def triton_importable() -> bool:
    """Whether ``import triton`` succeeded."""
    return _TRITON_IMPORT_ERROR is None


def interpret_mode() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``).

    Read at call time, but note that Triton decides between compiled and interpreted kernels when a
    ``@triton.jit`` function is *defined*, i.e. when the kernel module is first imported.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """Triton can actually run: it imports and there is a GPU or the interpreter is on.

    No CUDA query happens at import time (that breaks test collection on CPU boxes); this is a function.
    """
    return triton_importable() and (torch.cuda.is_available() or interpret_mode())


def triton_unavailable_reason() -> str | None:
    """A human-readable reason why :func:`triton_available` is False, else None."""
    if not triton_importable():
        return f"triton is not importable ({_TRITON_IMPORT_ERROR})"
    if not (torch.cuda.is_available() or interpret_mode()):
        return "no CUDA device and TRITON_INTERPRET != '1'"
    return None


def skip_autotune() -> bool:
    """Collapse autotune config lists to one entry (tests, interpreter runs, quick benchmarks)."""
    return os.environ.get("HETA_FAST_SKIP_AUTOTUNE", "0") == "1" or interpret_mode()


_KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"


def load_kernel_module(name: str) -> ModuleType:
    """Import ``heta_fast.kernels.<name>``, falling back to loading ``kernels/<name>.py`` by path.

    The fallback covers editable installs and plain checkouts (setup.py's package_dir mapping makes
    ``heta_fast.kernels`` importable in a built wheel only, since ``kernels/`` is no import package). The module is registered under its
    ``heta_fast.kernels.<name>`` name either way, so it is only ever loaded once.

    Raises:
        RuntimeError: Triton is not importable.
        ImportError: the kernel file cannot be found.
    """
    if not triton_importable():
        raise RuntimeError(f"Triton kernels need triton: {triton_unavailable_reason()}")
    full_name = f"heta_fast.kernels.{name}"
    if full_name in sys.modules:
        return sys.modules[full_name]
    try:
        return importlib.import_module(full_name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("heta_fast.kernels", full_name):
            raise  # the module exists but something it imports is missing: report that
    path = _KERNELS_DIR / f"{name}.py"
    if not path.is_file():
        raise ImportError(f"cannot find {full_name} (not installed, and no {path})")
    spec = importlib.util.spec_from_file_location(full_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[full_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[full_name]
        raise
    return module
