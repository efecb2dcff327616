// CUDA binding of heta_fast::kl_from_hidden (compiled only when torch has CUDA and nvcc exists).
// The GEMM for each vocabulary block goes through at::mm (cuBLAS); the online reduction over the
// block and the final combination are the torch-free kernels in kl_block.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream without cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "heta_fast/kl_cuda.h"
#include "heta_fast/kl_torch.h"

namespace heta_fast {

namespace {
void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "kl_from_hidden_cuda: ", what, " failed: ",
              cudaGetErrorString(err));
}
}  // namespace

at::Tensor kl_from_hidden_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& base_logp, const std::optional<at::Tensor>& bias,
                               double softcap, int64_t block_size) {
  check_kl_from_hidden_args(hidden, weight, base_logp, bias, softcap, block_size);
  TORCH_CHECK(hidden.is_cuda(), "kl_from_hidden_cuda: expected CUDA tensors, got ",
              hidden.device());
  const c10::cuda::CUDAGuard guard(hidden.device());

  const int64_t R = hidden.size(0);
  const int64_t V = weight.size(0);
  TORCH_CHECK(R <= std::numeric_limits<int>::max(), "kl_from_hidden_cuda: too many rows: ", R);
  at::Tensor out = at::empty({R}, hidden.options().dtype(at::kFloat));
  if (R == 0) return out;

  // Upcast as on CPU: hidden once, weight one block at a time (fp32 GEMM, fp32 reduction).
  const at::Tensor h = hidden.to(at::kFloat).contiguous();
  const at::Tensor lp = base_logp.to(at::kFloat).contiguous();
  const at::Tensor consts = pi_constants(base_logp).contiguous();  // [2] float64, stays on device
  const int64_t bs = std::min<int64_t>({block_size, V, std::numeric_limits<int>::max()});

  at::Tensor state = at::empty({3, R}, h.options());
  float* run_max = state[0].data_ptr<float>();
  float* run_sum = state[1].data_ptr<float>();
  float* run_dot = state[2].data_ptr<float>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(hidden.device().index());
  check_cuda(heta_kl_init_cuda(static_cast<int>(R), run_max, run_sum, run_dot, stream), "init");

  at::Tensor buf = at::empty({R * bs}, h.options());
  for (int64_t v0 = 0; v0 < V; v0 += bs) {
    const int64_t bv = std::min(bs, V - v0);
    at::Tensor logits = buf.narrow(0, 0, R * bv).view({R, bv});
    const at::Tensor w = weight.narrow(0, v0, bv).to(at::kFloat);
    if (bias.has_value()) {
      at::addmm_out(logits, bias->narrow(0, v0, bv).to(at::kFloat), h, w.t());
    } else {
      at::mm_out(logits, h, w.t());
    }
    check_cuda(heta_kl_block_update_cuda(logits.data_ptr<float>(), lp.data_ptr<float>() + v0,
                                         static_cast<int>(R), static_cast<int>(bv), bv,
                                         static_cast<float>(softcap), run_max, run_sum, run_dot,
                                         stream),
               "block update");
  }
  check_cuda(heta_kl_finalize_cuda(static_cast<int>(R), run_max, run_sum, run_dot,
                                   consts.data_ptr<double>(), out.data_ptr<float>(), stream),
             "finalize");
  return out;
}

}  // namespace heta_fast

TORCH_LIBRARY_IMPL(heta_fast, CUDA, m) {
  m.impl("kl_from_hidden", &heta_fast::kl_from_hidden_cuda);
}
