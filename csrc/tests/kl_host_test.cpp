// Host-only check of the torch-free math in kl.h (no torch, no CUDA): merging per-block online
// states must equal a direct float64 KL. Built by CMake (HETA_FAST_BUILD_TESTS=ON, ctest) and by
// tests/test_cuda_compile.py. Exit code 0 = ok.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "heta_fast/kl.h"

int main() {
  using namespace heta_fast;
  const int V = 3001, block = 256;
  const float cap = 15.0f;
  std::mt19937 gen(1);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  std::vector<double> clean(V), lp(V);
  std::vector<float> z(V);
  double mx = -1e300, se = 0.0;
  for (int v = 0; v < V; ++v) mx = std::max(mx, clean[v] = nd(gen));
  for (int v = 0; v < V; ++v) se += std::exp(clean[v] - mx);
  double plogp = 0.0, psum = 0.0;
  for (int v = 0; v < V; ++v) {
    lp[v] = clean[v] - mx - std::log(se);
    plogp += std::exp(lp[v]) * lp[v];
    psum += std::exp(lp[v]);
  }
  for (auto& x : z) x = nd(gen);

  // Streamed: per-element pushes inside a block, then block merges (the CPU/CUDA structure).
  OnlineKL<float> st = online_kl_init<float>();
  for (int v0 = 0; v0 < V; v0 += block) {
    float m = neg_inf<float>(), s = 0.0f, dot = 0.0f;
    for (int v = v0; v < std::min(V, v0 + block); ++v) {
      const float x = apply_softcap(z[v], cap);
      lse_push(m, s, x);
      dot += pi_times_z(static_cast<float>(std::exp(lp[v])), x);
    }
    online_kl_merge(st, m, s, dot);
  }
  const float got = kl_finalize(st.m, st.s, st.dot, plogp, psum);

  // Direct float64.
  double m2 = -1e300, s2 = 0.0, want = 0.0;
  std::vector<double> zz(V);
  for (int v = 0; v < V; ++v) m2 = std::max(m2, zz[v] = cap * std::tanh(z[v] / cap));
  for (int v = 0; v < V; ++v) s2 += std::exp(zz[v] - m2);
  for (int v = 0; v < V; ++v) want += std::exp(lp[v]) * (lp[v] - zz[v] + m2 + std::log(s2));

  const double rel = std::fabs(got - want) / std::fabs(want);
  std::printf("kl=%.7g ref=%.7g rel=%.3g\n", got, want, rel);
  return rel < 1e-5 ? 0 : 1;
}
