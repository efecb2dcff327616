// CPU kernel of heta_fast::kl_from_hidden: KL(pi || softmax(hidden[r] @ W.T + b)) for every row r,
// streaming the vocabulary in blocks so that the [R, V] logits matrix is never materialised.
//
// Per vocabulary block: one BLAS GEMM gives the block logits [R, Bv] (a hand-written dot loop would
// be far slower), then at::parallel_for over rows folds the block into each row's online
// (max, sum-exp, sum pi*z) state. Everything after the GEMM accumulates in float32; the final
// combination is done in float64 (see kl.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "heta_fast/kl.h"
#include "heta_fast/kl_torch.h"

namespace heta_fast {
namespace {

using Vec = at::vec::Vectorized<float>;

// Soft-caps row[0:n) in place (if cap > 0) and returns its max.
float softcap_and_max(float* row, int64_t n, float cap) {
  const int64_t nv = n - n % Vec::size();
  Vec vmax(neg_inf<float>());
  const Vec vcap(cap), vinv(1.0f / cap);
  int64_t j = 0;
  for (; j < nv; j += Vec::size()) {
    Vec z = Vec::loadu(row + j);
    if (cap > 0.0f) {
      z = vcap * (z * vinv).tanh();
      z.store(row + j);
    }
    vmax = at::vec::maximum(vmax, z);
  }
  float m = neg_inf<float>();
  if (nv > 0) {
    m = at::vec::vec_reduce_all<float>(
        [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  }
  for (; j < n; ++j) {
    row[j] = apply_softcap(row[j], cap);
    m = std::max(m, row[j]);
  }
  return m;
}

// Returns (sum_j exp(row[j] - m), sum_j pi[j] * row[j]) in float32.
// `pi_has_zero` selects the slow path that honours the 0 * (-inf) = 0 convention.
void sumexp_and_dot(const float* row, const float* pi, int64_t n, float m, bool pi_has_zero,
                    float* out_sum, float* out_dot) {
  float s = 0.0f, d = 0.0f;
  if (m == neg_inf<float>()) {  // every logit is -inf: exp() sums to 0; avoid (-inf) - (-inf)
    for (int64_t j = 0; j < n; ++j) d += pi_times_z(pi[j], row[j]);
    *out_sum = 0.0f;
    *out_dot = d;
    return;
  }
  const int64_t nv = n - n % Vec::size();
  Vec vs(0.0f), vd(0.0f);
  const Vec vm(m);
  int64_t j = 0;
  for (; j < nv; j += Vec::size()) {
    const Vec z = Vec::loadu(row + j);
    vs = vs + (z - vm).exp();
    if (!pi_has_zero) vd = at::vec::fmadd(Vec::loadu(pi + j), z, vd);
  }
  if (nv > 0) {
    s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vs);
    if (!pi_has_zero) d = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vd);
  }
  for (; j < n; ++j) {
    s += std::exp(row[j] - m);
    if (!pi_has_zero) d += pi[j] * row[j];
  }
  if (pi_has_zero) {
    for (int64_t k = 0; k < n; ++k) d += pi_times_z(pi[k], row[k]);
  }
  *out_sum = s;
  *out_dot = d;
}

}  // namespace

at::Tensor kl_from_hidden_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                              const at::Tensor& base_logp, const std::optional<at::Tensor>& bias,
                              double softcap, int64_t block_size) {
  check_kl_from_hidden_args(hidden, weight, base_logp, bias, softcap, block_size);
  TORCH_CHECK(hidden.device().is_cpu(), "kl_from_hidden_cpu: expected CPU tensors, got ",
              hidden.device());

  const int64_t R = hidden.size(0);
  const int64_t V = weight.size(0);
  at::Tensor out = at::empty({R}, hidden.options().dtype(at::kFloat));
  if (R == 0) return out;

  // bf16/fp16 inputs are upcast: hidden once ([R, d] is small), weight one block at a time.
  const at::Tensor h = hidden.to(at::kFloat).contiguous();
  const at::Tensor pi = base_logp.to(at::kFloat).exp().contiguous();
  const bool pi_has_zero = pi.min().item<float>() == 0.0f;
  const at::Tensor consts = pi_constants(base_logp);
  const double plogp = consts[0].item<double>();
  const double psum = consts[1].item<double>();
  const float cap = static_cast<float>(softcap);

  const int64_t bs = std::min<int64_t>(block_size, V);
  // One reusable [R, bs] buffer; the last (shorter) block uses a contiguous prefix of it.
  at::Tensor buf = at::empty({R * bs}, h.options());
  std::vector<OnlineKL<float>> state(R, online_kl_init<float>());
  const float* pi_ptr = pi.data_ptr<float>();
  // A row of a block costs ~bv exps; aim for ~GRAIN_SIZE elements per task.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / bs);

  for (int64_t v0 = 0; v0 < V; v0 += bs) {
    const int64_t bv = std::min(bs, V - v0);
    at::Tensor logits = buf.narrow(0, 0, R * bv).view({R, bv});
    const at::Tensor w = weight.narrow(0, v0, bv).to(at::kFloat);
    if (bias.has_value()) {
      at::addmm_out(logits, bias->narrow(0, v0, bv).to(at::kFloat), h, w.t());
    } else {
      at::mm_out(logits, h, w.t());
    }
    float* lg = logits.data_ptr<float>();
    const float* pb = pi_ptr + v0;
    at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* row = lg + r * bv;
        const float bmax = softcap_and_max(row, bv, cap);
        float bsum, bdot;
        sumexp_and_dot(row, pb, bv, bmax, pi_has_zero, &bsum, &bdot);
        online_kl_merge(state[r], bmax, bsum, bdot);
      }
    });
  }

  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    o[r] = kl_finalize(state[r].m, state[r].s, state[r].dot, plogp, psum);
  }
  return out;
}

}  // namespace heta_fast

// The schema is defined in Python (heta_fast/ops.py); this only adds the CPU kernel, which takes
// precedence over the CompositeExplicitAutograd torch reference whenever _C is loaded.
TORCH_LIBRARY_IMPL(heta_fast, CPU, m) { m.impl("kl_from_hidden", &heta_fast::kl_from_hidden_cpu); }
