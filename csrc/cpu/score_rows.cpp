// CPU kernels of heta_fast::center_mul_rows_ and heta_fast::softmax_vjp_rows_: the elementwise passes of
// the query-blocked attention core over one score block (heta_fast/hf/score_rows.py has the schemas, the
// torch references and the layouts). torch runs each of those ops as its own pass over the whole block,
// tens of MiB that fall out of cache between ops; here every row is read once and its few passes
// (a row sum, then the update) run while it is in cache, and one row of P serves every direction.
//
// Layout: the direction tensors are [O, N, I, k] (N directions between an outer and an inner row axis),
// P and dP − δ are [O, I, k] (shared by the directions), per-row statistics [O, N, I]; all contiguous.
// Row loops are plain C++ compiled for AVX-512, AVX2 and the baseline (picked at load time on x86-64
// Linux), since this extension is built without -march flags; sums are float32 (float64 for double).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define HETA_ROW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HETA_ROW_CLONES
#endif

namespace heta_fast {
namespace {

// One row of x ← (x − d)·p.
template <typename T>
HETA_ROW_CLONES void center_mul_row(T* x, T d, const T* p, int64_t k) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) x[j] = (x[j] - d) * p[j];
}

// One row of the softmax part of the core's second backward (the formula of
// heta_fast/hf/score_rows.py:softmax_vjp_rows_reference): g_ds ← G_dP, g_p ← G_S.
template <typename T>
HETA_ROW_CLONES void softmax_vjp_row(const T* p, const T* dpc, T* g_ds, T* g_p, int64_t k) {
  T r1 = 0;
#pragma omp simd reduction(+ : r1)
  for (int64_t j = 0; j < k; ++j) r1 += p[j] * g_ds[j];
  T r2 = 0;
#pragma omp simd reduction(+ : r2)
  for (int64_t j = 0; j < k; ++j) {
    const T a = g_ds[j] - r1;        // A = G_dS − rowsum(P ⊙ G_dS)
    const T gp = g_p[j] + a * dpc[j];  // G_P = dO gVᵀ + A ⊙ (dP − δ)
    g_ds[j] = p[j] * a;              // G_dP = P ⊙ A
    g_p[j] = gp;
    r2 += p[j] * gp;
  }
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) g_p[j] = (g_p[j] - r2) * p[j];  // G_S = P ⊙ (G_P − rowsum(P ⊙ G_P))
}

void check_rows(const char* op, const at::Tensor& x, const at::Tensor& p) {
  TORCH_CHECK(x.dim() == 4 && p.dim() == 3, op, ": expected [O, N, I, k] and [O, I, k], got ", x.sizes(),
              " and ", p.sizes());
  TORCH_CHECK(p.size(0) == x.size(0) && p.size(1) == x.size(2) && p.size(2) == x.size(3), op,
              ": P ", p.sizes(), " does not match the rows ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && p.device().is_cpu(), op, ": expected CPU tensors");
  TORCH_CHECK(x.scalar_type() == p.scalar_type(), op, ": dtypes differ: ", x.scalar_type(), " and ",
              p.scalar_type());
  TORCH_CHECK(x.is_contiguous() && p.is_contiguous(), op, ": tensors must be contiguous");
}

// Calls f(r, row) for every row of an [O, N, I, k] tensor: r the row of P ([O, I, k]), row the direction's row.
// Tasks are whole rows of P with all their N directions (P's row stays in cache), ~GRAIN_SIZE elements each.
template <typename F>
void for_each_row(int64_t O, int64_t N, int64_t I, int64_t k, const F& f) {
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, N * k));
  at::parallel_for(0, O * I, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t o = r / I, i = r % I;
      for (int64_t n = 0; n < N; ++n) f(r, (o * N + n) * I + i);
    }
  });
}

}  // namespace

void center_mul_rows_cpu(at::Tensor& x, const at::Tensor& delta, const at::Tensor& p) {
  check_rows("center_mul_rows_", x, p);
  TORCH_CHECK(delta.dim() == 3 && delta.size(0) == x.size(0) && delta.size(1) == x.size(1) &&
                  delta.size(2) == x.size(2) && delta.is_contiguous() &&
                  delta.scalar_type() == x.scalar_type(),
              "center_mul_rows_: delta must be a contiguous [O, N, I] of x's dtype, got ", delta.sizes());
  const int64_t O = x.size(0), N = x.size(1), I = x.size(2), k = x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "center_mul_rows_", [&] {
    scalar_t* xs = x.data_ptr<scalar_t>();
    const scalar_t* ds = delta.data_ptr<scalar_t>();
    const scalar_t* ps = p.data_ptr<scalar_t>();
    for_each_row(O, N, I, k, [&](int64_t r, int64_t row) {
      center_mul_row<scalar_t>(xs + row * k, ds[row], ps + r * k, k);
    });
  });
}

void softmax_vjp_rows_cpu(const at::Tensor& p, const at::Tensor& dpc, at::Tensor& g_ds, at::Tensor& g_p) {
  check_rows("softmax_vjp_rows_", g_ds, p);
  check_rows("softmax_vjp_rows_", g_p, dpc);
  TORCH_CHECK(g_ds.sizes() == g_p.sizes(), "softmax_vjp_rows_: G_dS ", g_ds.sizes(), " and G_P ", g_p.sizes(),
              " differ");
  const int64_t O = g_ds.size(0), N = g_ds.size(1), I = g_ds.size(2), k = g_ds.size(3);
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "softmax_vjp_rows_", [&] {
    const scalar_t* ps = p.data_ptr<scalar_t>();
    const scalar_t* cs = dpc.data_ptr<scalar_t>();
    scalar_t* gds = g_ds.data_ptr<scalar_t>();
    scalar_t* gps = g_p.data_ptr<scalar_t>();
    for_each_row(O, N, I, k, [&](int64_t r, int64_t row) {
      softmax_vjp_row<scalar_t>(ps + r * k, cs + r * k, gds + row * k, gps + row * k, k);
    });
  });
}

}  // namespace heta_fast

// The schemas and the torch references (CompositeExplicitAutograd) are defined in heta_fast/hf/score_rows.py;
// these CPU kernels take precedence over the references whenever _C is loaded.
TORCH_LIBRARY_IMPL(heta_fast, CPU, m) {
  m.impl("center_mul_rows_", &heta_fast::center_mul_rows_cpu);
  m.impl("softmax_vjp_rows_", &heta_fast::softmax_vjp_rows_cpu);
}
