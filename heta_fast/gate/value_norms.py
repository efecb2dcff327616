"""What both gate paths share: value norms ν (SPEC §1, Kobayashi et al. 2020) and the normalisation of M."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UnsupportedModelError
from ..hf import ModelAdapter


def value_norms(adapter: ModelAdapter, layer: int, value: Tensor) -> Tensor:
    """ν^{l,h}_i = ‖W_O^h v^{l,h}_i‖_1 from the model's own value vectors ``value [H_kv, n, d_h]`` → ``[H, n]``,
    in float32 or better (a half-precision model's values are upcast before the product and the sum)."""
    H, dh = adapter.num_heads, adapter.head_dim
    group = H // adapter.num_kv_heads
    value = value.to(torch.promote_types(value.dtype, torch.float32))
    W_O = adapter.output_projection(adapter.attentions[layer]).to(value.dtype)
    out = []
    for h in range(H):
        W_Oh = W_O[:, h * dh : (h + 1) * dh]  # [d, dh]
        out.append((value[h // group] @ W_Oh.T).abs().sum(-1))
    return torch.stack(out)


def raw_value_norms(adapter: ModelAdapter, layer: int, resid: Tensor) -> Tensor:
    """Official-code value norms: ‖(h_i W_V^{h,T}) W_O^{h,T}‖_1 from the raw residual ``resid [n, d]`` → ``[H, n]``."""
    H, dh = adapter.num_heads, adapter.head_dim
    attn = adapter.attentions[layer]
    resid = resid.to(torch.promote_types(resid.dtype, torch.float32))
    W_V = adapter.value_projection(attn).to(resid.dtype)  # [H*dh, d] when H_kv == H
    W_O = adapter.output_projection(attn).to(resid.dtype)
    out = []
    for h in range(H):
        v = resid @ W_V[h * dh : (h + 1) * dh].T
        out.append((v @ W_O[:, h * dh : (h + 1) * dh].T).abs().sum(-1))
    return torch.stack(out)


def require_full_kv_heads(adapter: ModelAdapter) -> None:
    """rollout='reference' slices W_V per query head, which only exists when H_kv = H."""
    if adapter.num_kv_heads != adapter.num_heads:
        raise UnsupportedModelError(
            f"rollout='reference' is only defined when H_kv = H (this model has {adapter.num_kv_heads} kv "
            f"heads for {adapter.num_heads} query heads); use rollout='flow'"
        )


def normalise_gate(contrib: Tensor) -> Tensor:
    """M_i = max(0, c_i) / Z over the context; uniform 1/t when Z = 0 (SPEC §1)."""
    M = contrib.clamp_min(0)
    Z = M.sum()
    return M / Z if Z > 0 else torch.full_like(M, 1.0 / M.numel())
