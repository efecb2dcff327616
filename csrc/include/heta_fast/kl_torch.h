// Torch-facing helpers shared by the CPU and CUDA bindings of heta_fast::kl_from_hidden:
// argument validation and the pi-only constants. Not included by .cu files (kl.h is).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

namespace heta_fast {

// Same checks (and messages) as the Python wrapper in heta_fast/ops.py, so calling the op through
// torch.ops directly still fails with a readable error.
inline void check_kl_from_hidden_args(const at::Tensor& hidden, const at::Tensor& weight,
                                      const at::Tensor& base_logp,
                                      const std::optional<at::Tensor>& bias, double softcap,
                                      int64_t block_size) {
  TORCH_CHECK(hidden.dim() == 2, "kl_from_hidden: hidden must be [R, d], got ", hidden.dim(),
              " dims");
  TORCH_CHECK(weight.dim() == 2, "kl_from_hidden: weight must be [V, d], got ", weight.dim(),
              " dims");
  TORCH_CHECK(base_logp.dim() == 1, "kl_from_hidden: base_logp must be [V], got ",
              base_logp.dim(), " dims");
  TORCH_CHECK(hidden.size(1) == weight.size(1), "kl_from_hidden: hidden has d=", hidden.size(1),
              " but weight has d=", weight.size(1));
  TORCH_CHECK(base_logp.size(0) == weight.size(0), "kl_from_hidden: weight has V=",
              weight.size(0), " but base_logp has V=", base_logp.size(0));
  TORCH_CHECK(weight.size(0) >= 1, "kl_from_hidden: the vocabulary is empty (V=0)");
  TORCH_CHECK(at::isFloatingType(hidden.scalar_type()) &&
                  at::isFloatingType(weight.scalar_type()) &&
                  at::isFloatingType(base_logp.scalar_type()),
              "kl_from_hidden: hidden, weight and base_logp must be floating point, got ",
              hidden.scalar_type(), ", ", weight.scalar_type(), ", ", base_logp.scalar_type());
  TORCH_CHECK(hidden.device() == weight.device() && hidden.device() == base_logp.device(),
              "kl_from_hidden: tensors are on different devices: hidden ", hidden.device(),
              ", weight ", weight.device(), ", base_logp ", base_logp.device());
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == weight.size(0),
                "kl_from_hidden: bias must be [V] with V=", weight.size(0), ", got ", b.sizes());
    TORCH_CHECK(at::isFloatingType(b.scalar_type()),
                "kl_from_hidden: bias must be floating point, got ", b.scalar_type());
    TORCH_CHECK(b.device() == weight.device(), "kl_from_hidden: bias is on ", b.device(),
                " but weight is on ", weight.device());
  }
  TORCH_CHECK(block_size >= 1, "kl_from_hidden: block_size must be >= 1, got ", block_size);
  TORCH_CHECK(std::isfinite(softcap), "kl_from_hidden: softcap must be finite, got ", softcap);
}

// [sum_v pi_v log pi_v, sum_v pi_v] in float64 on base_logp's device (0 * log 0 := 0).
inline at::Tensor pi_constants(const at::Tensor& base_logp) {
  const at::Tensor lp = base_logp.to(at::kDouble);
  const at::Tensor pi = lp.exp();
  const at::Tensor plogp = at::where(pi > 0, pi * lp, at::zeros({}, pi.options())).sum();
  return at::stack({plogp, pi.sum()});
}

}  // namespace heta_fast
