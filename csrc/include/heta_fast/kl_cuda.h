// Host-callable launchers of the torch-free CUDA kernels in csrc/cuda/kl_block.cu.
// All pointers are device pointers; every launcher is asynchronous on `stream` and returns the
// launch status (cudaGetLastError()).
#pragma once

#include <cuda_runtime.h>

// run_max = -inf, run_sum = 0, run_dot = 0 for `rows` rows.
cudaError_t heta_kl_init_cuda(int rows, float* run_max, float* run_sum, float* run_dot,
                              cudaStream_t stream);

// Folds one vocabulary block into the per-row online state.
//   logits:          [rows, ld] float32, the first block_v columns of each row are used
//                    (raw logits; soft-capping is applied here when softcap > 0)
//   base_logp_block: [block_v] float32, clean log-probabilities of the same vocabulary slice
//   run_max/run_sum/run_dot: [rows] float32 running max, sum exp(z - max), sum pi * z
cudaError_t heta_kl_block_update_cuda(const float* logits, const float* base_logp_block, int rows,
                                      int block_v, long long ld, float softcap, float* run_max,
                                      float* run_sum, float* run_dot, cudaStream_t stream);

// out[r] = max(0, pi_consts[0] - run_dot[r] + pi_consts[1] * (run_max[r] + log run_sum[r])).
//   pi_consts: [2] float64 device array {sum pi log pi, sum pi}
cudaError_t heta_kl_finalize_cuda(int rows, const float* run_max, const float* run_sum,
                                  const float* run_dot, const double* pi_consts, float* out,
                                  cudaStream_t stream);
