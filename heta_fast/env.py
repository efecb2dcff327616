"""``python -m heta_fast.env``: what heta_fast found on this machine (paste it into bug reports)."""

from __future__ import annotations

import os
import platform


def report() -> dict:
    import torch

    from . import __version__, _ext, _triton, backends
    from .cpu_allocator import huge_pages_status, malloc_tuning_status, tune_malloc_for_tensors

    tune_malloc_for_tensors()
    info = {
        "heta_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension_loaded": _ext.has_ext(),
        "extension_cuda_built": _ext.cuda_built() if _ext.has_ext() else False,
        "extension_error": None if _ext.has_ext() else str(_ext.load_error()),
        "triton_importable": _triton.triton_importable(),
        "triton_usable": _triton.triton_available(),
        "triton_interpret": _triton.interpret_mode(),
        "triton_unavailable_reason": _triton.triton_unavailable_reason(),
        "cpu_malloc_tuning": malloc_tuning_status(),  # what an Attributor on the CPU gets
        "cpu_huge_pages": huge_pages_status(),  # torch's large CPU blocks on transparent huge pages
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for op in ("attn_vecmat", "kl_from_hidden", "score_rows"):  # what backend="auto" picks, per device
        info[f"backend_{op}"] = {dev: _auto_backend(backends, op, dev) for dev in devices}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("HETA_FAST_", "MALLOC_")) or k in ("TRITON_INTERPRET", "MAX_JOBS", "THP_MEM_ALLOC_ENABLE")}
    info["env"] = env
    return info


def _auto_backend(backends, op: str, device: str) -> str:
    try:
        return backends.resolve(op, "auto", device)
    except RuntimeError as exc:  # an explicit HETA_FAST_BACKEND that cannot run here
        return f"error: {exc}"


def main() -> None:
    for key, value in report().items():
        print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
