// Standalone check of csrc/cuda/kl_block.cu without torch: streams random logits through the
// launchers block by block and compares with a float64 host computation of
// KL(pi || softmax(softcap(z))). Built and (when a GPU is present) run by
// tests/test_cuda_compile.py. Exit codes: 0 ok, 1 mismatch, 77 no CUDA device (skip).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "heta_fast/kl_cuda.h"

#define CHECK(x)                                                                    \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e_));          \
      return 1;                                                                     \
    }                                                                               \
  } while (0)

int main() {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("no CUDA device\n");
    return 77;
  }
  const int rows = 37, V = 5003, block = 1000;  // ragged last block
  const float softcap = 20.0f;
  std::mt19937 gen(0);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> z(static_cast<size_t>(rows) * V), clean(V), lp(V);
  for (auto& x : z) x = nd(gen);
  double mx = -1e300, se = 0.0;
  for (int v = 0; v < V; ++v) mx = std::fmax(mx, clean[v] = nd(gen));
  for (int v = 0; v < V; ++v) se += std::exp(clean[v] - mx);
  double plogp = 0.0, psum = 0.0;
  for (int v = 0; v < V; ++v) {
    lp[v] = static_cast<float>(clean[v] - mx - std::log(se));
    const double p = std::exp(static_cast<double>(lp[v]));
    plogp += p * lp[v];
    psum += p;
  }

  float *d_z, *d_lp, *d_state, *d_out;
  double* d_consts;
  CHECK(cudaMalloc(&d_z, sizeof(float) * rows * block));
  CHECK(cudaMalloc(&d_lp, sizeof(float) * V));
  CHECK(cudaMalloc(&d_state, sizeof(float) * 3 * rows));
  CHECK(cudaMalloc(&d_out, sizeof(float) * rows));
  CHECK(cudaMalloc(&d_consts, sizeof(double) * 2));
  const double consts[2] = {plogp, psum};
  CHECK(cudaMemcpy(d_consts, consts, sizeof(consts), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_lp, lp.data(), sizeof(float) * V, cudaMemcpyHostToDevice));
  float *m = d_state, *s = d_state + rows, *dot = d_state + 2 * rows;
  CHECK(heta_kl_init_cuda(rows, m, s, dot, 0));
  std::vector<float> blk(static_cast<size_t>(rows) * block);
  for (int v0 = 0; v0 < V; v0 += block) {
    const int bv = std::min(block, V - v0);
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < bv; ++j) blk[r * bv + j] = z[static_cast<size_t>(r) * V + v0 + j];
    CHECK(cudaMemcpy(d_z, blk.data(), sizeof(float) * rows * bv, cudaMemcpyHostToDevice));
    CHECK(heta_kl_block_update_cuda(d_z, d_lp + v0, rows, bv, bv, softcap, m, s, dot, 0));
  }
  CHECK(heta_kl_finalize_cuda(rows, m, s, dot, d_consts, d_out, 0));
  std::vector<float> out(rows);
  CHECK(cudaMemcpy(out.data(), d_out, sizeof(float) * rows, cudaMemcpyDeviceToHost));

  double worst = 0.0;
  for (int r = 0; r < rows; ++r) {
    std::vector<double> zz(V);
    double m2 = -1e300, s2 = 0.0, kl = 0.0;
    for (int v = 0; v < V; ++v) {
      zz[v] = softcap * std::tanh(z[static_cast<size_t>(r) * V + v] / softcap);
      m2 = std::fmax(m2, zz[v]);
    }
    for (int v = 0; v < V; ++v) s2 += std::exp(zz[v] - m2);
    const double lse = m2 + std::log(s2);
    for (int v = 0; v < V; ++v) kl += std::exp(static_cast<double>(lp[v])) * (lp[v] - zz[v] + lse);
    worst = std::fmax(worst, std::fabs(out[r] - kl) / std::fmax(std::fabs(kl), 1e-3));
  }
  std::printf("max rel err %.3g\n", worst);
  return worst < 1e-4 ? 0 : 1;  // --use_fast_math-free build; fp32 sums over 5k entries
}
