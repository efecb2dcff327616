"""Build of heta_fast and its optional C++/CUDA extension ``heta_fast._C``.

Developer install (build isolation would fetch a different torch than the one we link against)::

    pip install --no-build-isolation -e .

Environment switches:
    HETA_FAST_SKIP_EXT=1      pure-Python install, no extension (the torch references are used).
    HETA_FAST_FORCE_CUDA=0/1  override the CUDA auto-detection (torch.version.cuda and CUDA_HOME).
    HETA_FAST_NATIVE=1        add -march=native to the C++ flags (never on by default).
    DEBUG=1                   -O0 -g instead of -O3.
    MAX_JOBS, TORCH_CUDA_ARCH_LIST are honoured by torch's BuildExtension.
"""

from __future__ import annotations

import os
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
SKIP_EXT = os.getenv("HETA_FAST_SKIP_EXT", "0") == "1"
FORCE_CUDA = os.getenv("HETA_FAST_FORCE_CUDA")
NATIVE = os.getenv("HETA_FAST_NATIVE", "0") == "1"
DEBUG = os.getenv("DEBUG", "0") == "1"


def _sources(pattern: str) -> list[str]:
    # setuptools wants source paths relative to setup.py; sorted for reproducible builds.
    return sorted(os.path.relpath(p, ROOT) for p in glob(str(ROOT / pattern)))


def get_extensions() -> list:
    if SKIP_EXT:
        return []
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    # torchao's condition: CUDA-built torch plus nvcc is enough; no GPU is needed at build time.
    use_cuda = bool(torch.version.cuda) and CUDA_HOME is not None
    if FORCE_CUDA is not None:
        use_cuda = FORCE_CUDA == "1"
    if torch.version.cuda and CUDA_HOME is None:
        print("heta_fast: CUDA torch but no nvcc (CUDA_HOME unset): building CPU kernels only")

    sources = _sources("csrc/cpu/*.cpp") + ["csrc/bindings.cpp"]
    if use_cuda:
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")

    # No -std flag on purpose: BuildExtension appends the standard torch's own headers need
    # (-std=c++17 for older torch, -std=c++20 from torch 2.10 on; forcing c++17 against torch 2.13
    # headers already warns). Our sources are C++17-clean: tests/native/test_cuda_compile.py compiles the
    # torch-free kernels with nvcc -std=c++17.
    cxx = ["-O0", "-g"] if DEBUG else ["-O3"]
    if os.name != "nt":
        cxx.append("-fopenmp-simd")  # `#pragma omp simd` vectorises the row sums of csrc/cpu/score_rows.cpp; no runtime
    if NATIVE:
        cxx.append("-march=native")
    nvcc = ["-O0", "-g", "-G"] if DEBUG else ["-O3", "--use_fast_math"]

    ext_cls = CUDAExtension if use_cuda else CppExtension
    return [
        ext_cls(
            "heta_fast._C",
            sources,
            # ninja builds need absolute include paths (flash-attn's note).
            include_dirs=[str(ROOT / "csrc" / "include")],
            define_macros=[("HETA_FAST_WITH_CUDA", "1")] if use_cuda else [],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc} if use_cuda else {"cxx": cxx},
        )
    ]


def get_cmdclass() -> dict:
    if SKIP_EXT:
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    # Metadata lives in pyproject.toml; the layout lives here because of the kernels/ mapping:
    # the top-level folder kernels/ is installed as heta_fast.kernels and never as `kernels`
    # (that import name belongs to huggingface/kernels, which transformers probes).
    # Every subpackage (gate, curvature, information, hf, service, batch, ...) plus the mapped kernels.
    packages=find_packages(include=["heta_fast", "heta_fast.*"]) + ["heta_fast.kernels"],
    package_dir={"heta_fast": "heta_fast", "heta_fast.kernels": "kernels"},
    package_data={"heta_fast": ["py.typed"]},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
)
