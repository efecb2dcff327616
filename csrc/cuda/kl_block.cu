// Torch-free CUDA kernels of heta_fast::kl_from_hidden (raw pointers, cuda_runtime only), so this
// file compiles with plain nvcc and can be unit-tested without a CUDA build of torch.
//
// The torch-facing side (csrc/cuda/kl_from_hidden_cuda.cpp) computes one vocabulary block of
// logits with a GEMM and calls heta_kl_block_update_cuda() on it; after the last block it calls
// heta_kl_finalize_cuda(). The per-row state lives in three float arrays of length `rows`.
#include <cuda_runtime.h>

#include "heta_fast/kl.h"
#include "heta_fast/kl_cuda.h"

namespace heta_fast {
namespace {

constexpr int kThreads = 256;  // one CUDA block per row; 8 warps stride over the vocabulary block
constexpr unsigned kFullMask = 0xffffffffu;

// Reduces (m, s, dot) over the 32 lanes of a warp; every lane ends with the warp result.
__device__ __forceinline__ void warp_reduce(float& m, float& s, float& dot) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, off);
    const float s2 = __shfl_xor_sync(kFullMask, s, off);
    dot += __shfl_xor_sync(kFullMask, dot, off);
    lse_merge(m, s, m2, s2);
  }
}

__global__ void kl_block_update_kernel(const float* __restrict__ logits,     // [rows, ld]
                                       const float* __restrict__ base_logp,  // [block_v]
                                       int block_v, long long ld, float softcap,
                                       float* __restrict__ run_max,  // [rows]
                                       float* __restrict__ run_sum,  // [rows]
                                       float* __restrict__ run_dot)  // [rows]
{
  const long long row = blockIdx.x;
  const float* z = logits + row * ld;

  // Per-thread online pass over a strided slice of the block (coalesced loads).
  float m = neg_inf<float>(), s = 0.0f, dot = 0.0f;
  for (int j = threadIdx.x; j < block_v; j += blockDim.x) {
    const float x = apply_softcap(z[j], softcap);
    lse_push(m, s, x);
    dot += pi_times_z(expf(base_logp[j]), x);
  }

  warp_reduce(m, s, dot);
  __shared__ float sh_m[32], sh_s[32], sh_d[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = s;
    sh_d[warp] = dot;
  }
  __syncthreads();
  if (warp == 0) {
    const int n_warps = (blockDim.x + 31) >> 5;
    m = lane < n_warps ? sh_m[lane] : neg_inf<float>();
    s = lane < n_warps ? sh_s[lane] : 0.0f;
    dot = lane < n_warps ? sh_d[lane] : 0.0f;
    warp_reduce(m, s, dot);
    if (lane == 0) {
      // Launches on one stream are ordered, so the previous block's update of this row is done.
      OnlineKL<float> st{run_max[row], run_sum[row], run_dot[row]};
      online_kl_merge(st, m, s, dot);
      run_max[row] = st.m;
      run_sum[row] = st.s;
      run_dot[row] = st.dot;
    }
  }
}

__global__ void kl_init_kernel(int rows, float* run_max, float* run_sum, float* run_dot) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r < rows) {
    run_max[r] = neg_inf<float>();
    run_sum[r] = 0.0f;
    run_dot[r] = 0.0f;
  }
}

__global__ void kl_finalize_kernel(int rows, const float* __restrict__ run_max,
                                   const float* __restrict__ run_sum,
                                   const float* __restrict__ run_dot,
                                   const double* __restrict__ pi_consts,  // [2]: sum pi log pi, sum pi
                                   float* __restrict__ out) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r < rows) out[r] = kl_finalize(run_max[r], run_sum[r], run_dot[r], pi_consts[0], pi_consts[1]);
}

}  // namespace
}  // namespace heta_fast

cudaError_t heta_kl_init_cuda(int rows, float* run_max, float* run_sum, float* run_dot,
                              cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  heta_fast::kl_init_kernel<<<(rows + 255) / 256, 256, 0, stream>>>(rows, run_max, run_sum,
                                                                    run_dot);
  return cudaGetLastError();
}

cudaError_t heta_kl_block_update_cuda(const float* logits, const float* base_logp_block, int rows,
                                      int block_v, long long ld, float softcap, float* run_max,
                                      float* run_sum, float* run_dot, cudaStream_t stream) {
  if (rows <= 0 || block_v <= 0) return cudaSuccess;
  heta_fast::kl_block_update_kernel<<<rows, heta_fast::kThreads, 0, stream>>>(
      logits, base_logp_block, block_v, ld, softcap, run_max, run_sum, run_dot);
  return cudaGetLastError();
}

cudaError_t heta_kl_finalize_cuda(int rows, const float* run_max, const float* run_sum,
                                  const float* run_dot, const double* pi_consts, float* out,
                                  cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  heta_fast::kl_finalize_kernel<<<(rows + 255) / 256, 256, 0, stream>>>(
      rows, run_max, run_sum, run_dot, pi_consts, out);
  return cudaGetLastError();
}
