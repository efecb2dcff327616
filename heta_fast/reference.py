"""The reference engine: SPEC.md §1–4 written as plainly as possible, for float64 runs.

Every fast path in heta_fast is tested against these functions. They loop over tokens and probes,
materialise attention maps and run one forward per mask, exactly as the formulas read; they are slow on
purpose and must stay obviously correct. They also serve as the CPU fallback of last resort.

All functions take a :class:`~heta_fast.hf.ModelAdapter` (usually over a float64 copy of the model),
the context ids ``ids [t]`` (positions 0 … t-1, the prediction position is p = t-1) and the target id.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import HetaInputError, UnsupportedModelError
from .hf import ModelAdapter, plain_attention


# ----------------------------------------------------------------------------------------------- §1 gate
def value_norms(adapter: ModelAdapter, layer: int, value: Tensor) -> Tensor:
    """ν^{l,h}_i = ‖W_O^h v^{l,h}_i‖_1 from the model's own value vectors ``value [H_kv, n, d_h]`` → ``[H, n]``."""
    H, dh = adapter.num_heads, adapter.head_dim
    group = H // adapter.num_kv_heads
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
    W_V = adapter.value_projection(attn).to(resid.dtype)  # [H*dh, d] when H_kv == H
    W_O = adapter.output_projection(attn).to(resid.dtype)
    out = []
    for h in range(H):
        v = resid @ W_V[h * dh : (h + 1) * dh].T
        out.append((v @ W_O[:, h * dh : (h + 1) * dh].T).abs().sum(-1))
    return torch.stack(out)


def _first_layer(adapter: ModelAdapter, last_k: int | None) -> int:
    L = adapter.num_layers
    if last_k is None:
        return 0
    if last_k > L:
        raise HetaInputError(f"layers={last_k} but the model has only {L} layers")
    return L - last_k


def require_full_kv_heads(adapter: ModelAdapter) -> None:
    """rollout='reference' slices W_V per query head, which only exists when H_kv = H."""
    if adapter.num_kv_heads != adapter.num_heads:
        raise UnsupportedModelError(
            f"rollout='reference' is only defined when H_kv = H (this model has {adapter.num_kv_heads} kv "
            f"heads for {adapter.num_heads} query heads); use rollout='flow'"
        )


def _normalise_gate(contrib: Tensor) -> Tensor:
    """M_i = max(0, c_i) / Z over the context; uniform 1/t when Z = 0 (SPEC §1)."""
    M = contrib.clamp_min(0)
    Z = M.sum()
    return M / Z if Z > 0 else torch.full_like(M, 1.0 / M.numel())


def gate(adapter: ModelAdapter, ids: Tensor, *, rollout: str = "flow", layers: int | None = None) -> Tensor:
    """The causal gate M ``[t]`` (SPEC §1) from materialised attention maps."""
    t = ids.numel()
    p = t - 1
    X = adapter.embed(ids)
    with torch.no_grad(), plain_attention(), adapter.record(keep_probs=True, layer_inputs=rollout == "reference") as rec:
        adapter.forward(X)
    L, H = adapter.num_layers, adapter.num_heads
    first = _first_layer(adapter, layers)
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
    return _normalise_gate(contrib)


# ------------------------------------------------------------------------------------------ §2 curvature
def draw_probes(t: int, m: int, d: int, seed: int, dtype=torch.float64) -> Tensor:
    """Rademacher probes ``R [t, m, d]`` drawn in (i, k) order from a CPU generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (t, m, d), generator=gen) * 2 - 1).to(dtype)


def draw_range_finder(t: int, d: int, rank: int, seed: int, dtype=torch.float64) -> Tensor:
    """Gaussian test matrix Ω ``[t*d, rank]`` for hessian='lowrank' (a generator of its own, seed + 1)."""
    gen = torch.Generator().manual_seed(int(seed) + 1)
    return torch.randn(t * d, rank, generator=gen).to(dtype)


class CurvatureProblem:
    """g(X) = log π[x_t] at p, as a function of the differentiated variable (X, or the residual at L-k)."""

    def __init__(self, adapter: ModelAdapter, ids: Tensor, target_id: int, layers: int | None = None):
        self.adapter = adapter
        self.target_id = int(target_id)
        X = adapter.embed(ids).detach()
        self.X = X
        self.start = None
        if layers is None:
            self.point = X
        else:
            self.start = _first_layer(adapter, layers)
            with torch.no_grad(), adapter.record(layer_inputs=True) as rec:
                adapter.forward(X)
            self.point = rec.layer_inputs[self.start].detach()

    def logits(self, point: Tensor) -> Tensor:
        with plain_attention():
            if self.start is None:
                return self.adapter.last_logits(point)
            return self.adapter.last_logits(self.X, replace_layer_input=(self.start, point))

    def g(self, point: Tensor) -> Tensor:
        return torch.log_softmax(self.logits(point), dim=-1)[self.target_id]

    def hvp(self, v: Tensor) -> Tensor:
        """H v by double backward (one full forward/backward per call: the per-probe reference)."""
        x = self.point.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.g(x), x, create_graph=True)
        (hv,) = torch.autograd.grad((grad * v).sum(), x)
        return hv

    def gnvp(self, v: Tensor) -> Tensor:
        """G v = J^T (diag π − π π^T) J v with J = ∂z/∂(point): one JVP and one VJP, no second-order graph."""
        x = self.point.clone().requires_grad_(True)
        z = self.logits(x)
        pi = torch.softmax(z.detach(), dim=-1)
        # JVP via the double-vjp trick (plain autograd, so every model works).
        u0 = torch.zeros_like(z, requires_grad=True)
        (jt,) = torch.autograd.grad(z, x, u0, create_graph=True)
        (Jv,) = torch.autograd.grad(jt, u0, v)
        w = pi * Jv - pi * (pi @ Jv)
        (gv,) = torch.autograd.grad(z, x, w)
        return gv

    def matvec(self, v: Tensor, curvature: str) -> Tensor:
        return self.gnvp(v) if curvature == "gauss_newton" else self.hvp(v)


def sensitivity(
    adapter: ModelAdapter,
    ids: Tensor,
    target_id: int,
    *,
    probes: Tensor,
    hessian: str = "exact",
    rank: int = 64,
    curvature: str = "hessian",
    layers: int | None = None,
    seed: int = 0,
) -> Tensor:
    """S_i = (1/m) Σ_k ‖(C P_i R[i,k])_i‖_1 with C the Hessian (or Gauss–Newton matrix) — ``[t]`` (SPEC §2)."""
    prob = CurvatureProblem(adapter, ids, target_id, layers)
    t, d = prob.point.shape
    if probes.shape[0] != t or probes.shape[2] != d:
        raise HetaInputError(f"probes must have shape [t={t}, m, d={d}], got {tuple(probes.shape)}")
    probes = probes.to(prob.point)
    m = probes.shape[1]
    S = torch.zeros(t, dtype=prob.point.dtype, device=prob.point.device)
    if hessian == "exact":
        for i in range(t):
            for k in range(m):
                v = torch.zeros_like(prob.point)
                v[i] = probes[i, k]
                S[i] += prob.matvec(v, curvature)[i].abs().sum()
        return S / m
    if hessian != "lowrank":
        raise HetaInputError(f"unknown hessian mode {hessian!r}")
    # Randomized range finder (Halko et al.): Y = C Ω, Q = orth(Y), B = Q^T C Q, C ≈ Q B Q^T.
    omega = draw_range_finder(t, d, rank, seed).to(prob.point)
    Y = torch.stack([prob.matvec(omega[:, j].reshape(t, d), curvature).reshape(-1) for j in range(rank)], 1)
    Q, _ = torch.linalg.qr(Y)
    CQ = torch.stack([prob.matvec(Q[:, j].reshape(t, d), curvature).reshape(-1) for j in range(Q.shape[1])], 1)
    B = Q.T @ CQ
    B = 0.5 * (B + B.T)
    for i in range(t):
        Qi = Q[i * d : (i + 1) * d]  # rows of Q for token i's block
        for k in range(m):
            S[i] += (Qi @ (B @ (Qi.T @ probes[i, k]))).abs().sum()
    return S / m


# ------------------------------------------------------------------------------------------- §3 KL term
def mask_vector(adapter: ModelAdapter, all_ids: Tensor, mask: str, mask_token_id: int | None) -> Tensor:
    """The replacement row for a masked token: zero, mean of all n rows of X, or a token's embedding."""
    X_all = adapter.embed(all_ids)
    if mask == "zero":
        return torch.zeros_like(X_all[0])
    if mask == "mean":
        return X_all.mean(0)
    if mask == "token":
        if mask_token_id is None or not 0 <= mask_token_id < adapter.vocab_size:
            raise HetaInputError(f"mask_token_id={mask_token_id} is not a valid token id")
        return adapter.embed(torch.tensor([mask_token_id], device=all_ids.device))[0]
    raise HetaInputError(f"unknown mask {mask!r}")


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(π ‖ π') from log-probabilities (last dim), clamped at 0."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0)


def information(adapter: ModelAdapter, ids: Tensor, mask_vec: Tensor) -> Tensor:
    """I_i = KL(π ‖ π^{(i)}), one full forward per masked token ``[t]`` (SPEC §3)."""
    X = adapter.embed(ids)
    with torch.no_grad():
        base = torch.log_softmax(adapter.last_logits(X).to(torch.float64), -1)
        out = []
        for i in range(ids.numel()):
            Xi = X.clone()
            Xi[i] = mask_vec
            out.append(kl_divergence(base, torch.log_softmax(adapter.last_logits(Xi).to(torch.float64), -1)))
    return torch.stack(out).to(X.dtype)


# ---------------------------------------------------------------------------------------- §4 attribution
def combine(M: Tensor | None, S: Tensor | None, I: Tensor | None, beta: float, gamma: float, normalize: str):
    """Attr_i = M_i (β S_i + γ I_i); ``normalize='sum'`` divides S and I by their sums first."""

    def norm(x):
        if x is None or normalize == "none":
            return x
        s = x.sum()
        return x / s if s > 0 else x

    S, I = norm(S), norm(I)
    mix = None
    if S is not None:
        mix = beta * S
    if I is not None:
        mix = gamma * I if mix is None else mix + gamma * I
    if mix is None:
        return M.clone()
    return mix if M is None else M * mix
