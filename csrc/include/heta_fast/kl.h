// Torch-free core math of the streamed KL op, shared by the CPU (host C++) and CUDA kernels.
//
// For one masked run with logits z in R^V and the clean distribution pi = exp(base_logp):
//
//   KL(pi || softmax(z)) = sum_v pi_v (base_logp_v - z_v + LSE(z))
//                        = sum_v pi_v log pi_v  -  sum_v pi_v z_v  +  (sum_v pi_v) * LSE(z)
//
// The two pi-only sums are constants computed once (in double). The z-dependent parts are one
// online pass over the vocabulary: a running max m, a running sum s = sum exp(z - m) and a running
// dot = sum pi z. Blocks of the vocabulary are reduced independently and merged, so [R, V] logits
// never exist at once. (sum pi) is 1 up to rounding; keeping it makes the result equal the literal
// definition sum pi (base_logp - log_softmax z), which is what the float64 oracle computes.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define HETA_HD __host__ __device__ __forceinline__
#else
#define HETA_HD inline
#endif

namespace heta_fast {

HETA_HD float hd_exp(float x) { return expf(x); }
HETA_HD double hd_exp(double x) { return exp(x); }
HETA_HD float hd_log(float x) { return logf(x); }
HETA_HD double hd_log(double x) { return log(x); }
HETA_HD float hd_tanh(float x) { return tanhf(x); }
HETA_HD double hd_tanh(double x) { return tanh(x); }

// HUGE_VAL is a builtin usable in device code, unlike std::numeric_limits without
// --expt-relaxed-constexpr.
template <typename T>
HETA_HD T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}

// Gemma-2 final logit soft-capping; cap <= 0 means "off".
template <typename T>
HETA_HD T apply_softcap(T z, T cap) {
  return cap > T(0) ? cap * hd_tanh(z / cap) : z;
}

// pi * z with the convention 0 * z = 0, so a vocabulary entry with pi = 0 (base_logp = -inf)
// contributes nothing even when its masked logit is -inf.
template <typename T>
HETA_HD T pi_times_z(T pi, T z) {
  return pi > T(0) ? pi * z : T(0);
}

// Online log-sum-exp state of one row: LSE = m + log(s).
template <typename T>
struct OnlineKL {
  T m;    // running max of the logits seen so far
  T s;    // sum of exp(z - m) over the logits seen so far
  T dot;  // sum of pi_v * z_v over the logits seen so far
};

template <typename T>
HETA_HD OnlineKL<T> online_kl_init() {
  return OnlineKL<T>{neg_inf<T>(), T(0), T(0)};
}

// Adds one logit x (already soft-capped) to the (m, s) pair.
template <typename T>
HETA_HD void lse_push(T& m, T& s, T x) {
  if (x == neg_inf<T>()) return;  // exp(-inf) = 0; also avoids (-inf) - (-inf) = NaN
  if (x > m) {
    s = s * hd_exp(m - x) + T(1);
    m = x;
  } else {
    s += hd_exp(x - m);
  }
}

// Merges a partial (m2, s2) into (m, s); both are "LSE = m + log s" pairs.
template <typename T>
HETA_HD void lse_merge(T& m, T& s, T m2, T s2) {
  if (m2 == neg_inf<T>()) return;
  if (m == neg_inf<T>()) {
    m = m2;
    s = s2;
    return;
  }
  const T mn = m > m2 ? m : m2;
  s = s * hd_exp(m - mn) + s2 * hd_exp(m2 - mn);
  m = mn;
}

// Merges the reduction of one vocabulary block (its max, its sum of exp(z - block_max) and its
// sum of pi z) into the running state of a row.
template <typename T>
HETA_HD void online_kl_merge(OnlineKL<T>& st, T block_max, T block_sum, T block_dot) {
  lse_merge(st.m, st.s, block_max, block_sum);
  st.dot += block_dot;
}

// KL = sum pi log pi - sum pi z + (sum pi) * LSE, clamped at 0 (it is >= 0 up to rounding).
// NaN is propagated rather than clamped away, so broken inputs stay visible.
template <typename T>
HETA_HD float kl_finalize(T m, T s, T dot, double plogp, double psum) {
  const double lse = static_cast<double>(m) + hd_log(static_cast<double>(s));
  const double kl = plogp - static_cast<double>(dot) + psum * lse;
  if (kl != kl) return static_cast<float>(kl);
  return kl > 0.0 ? static_cast<float>(kl) : 0.0f;
}

}  // namespace heta_fast
