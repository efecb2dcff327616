"""Loads the optional compiled extension ``heta_fast._C`` without ever raising.

Loading ``_C`` registers the C++ CPU (and, when built, CUDA) kernels of ``heta_fast::*`` ops with
the dispatcher. If it is missing or broken, the exception text is kept for error messages and
``python -m heta_fast.env``, and every op falls back to its torch reference.

``HETA_FAST_DISABLE_EXT=1`` skips loading, and also disables an already loaded extension for
backend selection (``has_ext()`` reads it at call time).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

import torch  # noqa: F401  (libtorch must be loaded before _C's shared-library dependencies resolve)

logger = logging.getLogger(__name__)

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root"

_C: ModuleType | None = None
_LOAD_ERROR: str | None = None


def _disabled() -> bool:
    return os.environ.get("HETA_FAST_DISABLE_EXT", "0") == "1"


def _load() -> None:
    global _C, _LOAD_ERROR
    if _disabled():
        _LOAD_ERROR = "disabled by HETA_FAST_DISABLE_EXT=1"
        return
    try:
        _C = importlib.import_module("heta_fast._C")
    except Exception as e:  # ImportError, or OSError for an ABI/symbol mismatch
        _C = None
        _LOAD_ERROR = f"{type(e).__name__}: {e}"
        logger.debug("heta_fast._C not loaded: %s", _LOAD_ERROR)


def has_ext() -> bool:
    """True if ``heta_fast._C`` is loaded and not disabled by ``HETA_FAST_DISABLE_EXT=1``."""
    return _C is not None and not _disabled()


def cuda_built() -> bool:
    """True if the loaded extension contains the CUDA kernels."""
    return has_ext() and bool(_C.cuda_built())


def load_error() -> str | None:
    """Why the extension is unavailable (``None`` when it is usable)."""
    if has_ext():
        return None
    if _C is not None:
        return "disabled by HETA_FAST_DISABLE_EXT=1"
    return _LOAD_ERROR


def version() -> str | None:
    """Version string compiled into the extension, or ``None``."""
    return getattr(_C, "__version__", None) if _C is not None else None


_load()
