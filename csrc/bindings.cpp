// Python module heta_fast._C: build information only. The ops themselves are registered with the
// dispatcher by TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda, as a side effect of loading this .so.
#include <pybind11/pybind11.h>

#ifndef HETA_FAST_VERSION
#define HETA_FAST_VERSION "0.1.0"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "heta_fast compiled kernels (CPU, and CUDA when built)";
  m.def(
      "cuda_built",
      []() {
#ifdef HETA_FAST_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True if the CUDA kernels were compiled into this extension.");
  m.attr("__version__") = HETA_FAST_VERSION;
}
