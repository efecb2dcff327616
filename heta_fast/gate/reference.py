"""The causal gate M (SPEC §1) written as plainly as possible: the float64 oracle of :mod:`heta_fast.gate.fast`.

It materialises every layer's attention probabilities and loops over heads exactly as the formulas read; slow
on purpose, for tests and tiny inputs. The value norms (shared with the fast path) live in
:mod:`heta_fast.gate.value_norms`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import HetaInputError
from ..hf import ModelAdapter, plain_attention
from .value_norms import normalise_gate, raw_value_norms, require_full_kv_heads, value_norms


def gate(adapter: ModelAdapter, ids: Tensor, *, rollout: str = "flow", layers: int | None = None) -> Tensor:
    """The causal gate M ``[t]`` (SPEC §1) from materialised attention maps."""
    t = ids.numel()
    p = t - 1
    X = adapter.embed(ids)
    with torch.no_grad(), plain_attention(), adapter.record(keep_probs=True, layer_inputs=rollout == "reference") as rec:
        adapter.forward(X)
    L, H = adapter.num_layers, adapter.num_heads
    first = adapter.first_layer(layers)
    contrib = torch.zeros(t, dtype=X.dtype, device=X.device)
    eye = torch.eye(t, dtype=X.dtype, device=X.device)
    if rollout == "flow":
        rho = eye[p].clone()  # ρ^L = e_p
        for layer in reversed(range(first, L)):
            A = rec.layers[layer].probs.to(X.dtype)  # [H, t, t]
            Phi = torch.einsum("q,hqi->hi", rho, A)  # Φ^{l,h}_i = Σ_q ρ_q A_{q,i}
            contrib += (Phi * value_norms(adapter, layer, rec.layers[layer].value.to(X.dtype))).sum(0)
            rho = rho @ (0.5 * eye + 0.5 * A.mean(0))  # ρ^{l-1} = ρ^l Â^l
    elif rollout == "reference":
        require_full_kv_heads(adapter)
        for h in range(H):
            R = eye.clone()  # R_0 = I (restarted at the first used layer when layers=k)
            for layer in range(first, L):
                N = 0.5 * rec.layers[layer].probs[h].to(X.dtype) + 0.5 * eye
                R = (N / N.sum(-1, keepdim=True)) @ R
                nu = raw_value_norms(adapter, layer, rec.layer_inputs[layer].to(X.dtype))[h]
                contrib += R[p] * nu
    else:
        raise HetaInputError(f"unknown rollout {rollout!r}")
    return normalise_gate(contrib)
