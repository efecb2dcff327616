"""The reference engine against brute force and independent re-implementations of SPEC.md.

Every check here recomputes a quantity without heta_fast's recording attention: HF's own eager attention
with ``output_attentions``, projection outputs caught by forward hooks, explicit Hessians and Jacobians,
finite differences, and masked forwards run directly through the HF model. Models are float64 copies
of tiny random-weight models built from configs.
"""

import copy

import pytest
import torch

from heta_fast import reference
from heta_fast.hf import ModelAdapter
from heta_fast.testing import TINY_ARCHS, random_ids, rel_err, tiny_model

T = 7  # context length used throughout (odd on purpose)


def f64(arch, **kw):
    model = tiny_model(arch, **kw).double()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def hf_eager_run(model, X, *, hidden_states=False):
    """The model's own eager attention (not heta_fast's), with attention maps; X before embedding scale."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    scale = float(getattr(eager.get_input_embeddings(), "embed_scale", 1.0))
    values = {}

    def hook_for(layer_idx, kind):
        def hook(_mod, _inp, out):
            values[layer_idx] = (kind, out[0].detach())

        return hook

    cfg = eager.config
    attn_mods = [m for n, m in eager.named_modules() if n.endswith(("self_attn", ".attn")) and hasattr(m, "layer_idx")]
    for attn in attn_mods:
        for name in ("v_proj", "qkv_proj", "c_attn"):
            if hasattr(attn, name):
                getattr(attn, name).register_forward_hook(hook_for(attn.layer_idx, name))
                break
    out = eager(inputs_embeds=(X * scale)[None], output_attentions=True, output_hidden_states=hidden_states)
    H = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", None) or H
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    vals = []
    for layer in range(len(attn_mods)):
        kind, y = values[layer]
        if kind == "qkv_proj":
            y = y[:, (H + Hkv) * dh : (H + 2 * Hkv) * dh]
        elif kind == "c_attn":
            y = y[:, 2 * H * dh :]
        vals.append(y.reshape(y.shape[0], Hkv, dh).transpose(0, 1))  # [Hkv, n, dh]
    return out, vals, attn_mods


def independent_flow_gate(model, ids):
    """SPEC §1 flow rollout from HF eager attention maps and hooked value vectors, written from scratch."""
    X = model.get_input_embeddings().weight[ids]
    out, vals, attn_mods = hf_eager_run(model, X)
    cfg = model.config
    H = cfg.num_attention_heads
    dh = vals[0].shape[-1]
    group = H // vals[0].shape[0]
    t = ids.numel()
    rho = torch.zeros(t, dtype=torch.float64)
    rho[-1] = 1
    total = torch.zeros(t, dtype=torch.float64)
    for layer in reversed(range(len(attn_mods))):
        A = out.attentions[layer][0].double()
        attn = attn_mods[layer]
        proj = getattr(attn, "o_proj", None) or attn.c_proj
        W_O = proj.weight if isinstance(proj, torch.nn.Linear) else proj.weight.T
        for h in range(H):
            nu = (vals[layer][h // group] @ W_O[:, h * dh : (h + 1) * dh].T).abs().sum(-1)
            total += (rho @ A[h]) * nu
        rho = 0.5 * rho + 0.5 * (rho @ A.mean(0))
    M = total.clamp_min(0)
    return M / M.sum()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_recorded_values_equal_projection_outputs(arch):
    model = f64(arch)
    adapter = ModelAdapter(model)
    ids = random_ids(T)
    X = adapter.embed(ids)
    with torch.no_grad(), adapter.record() as rec:
        adapter.forward(X)
    _, vals, _ = hf_eager_run(model, X)
    assert len(rec.layers) == adapter.num_layers
    # Layer 0 sees identical inputs; later layers inherit HF eager's float32 softmax (some archs), so 1e-5.
    torch.testing.assert_close(rec.layers[0].value, vals[0], rtol=1e-12, atol=1e-12)
    for layer, v in enumerate(vals):
        assert rel_err(rec.layers[layer].value, v) < 1e-5


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_flow_gate_matches_independent_implementation(arch):
    model = f64(arch)
    ids = random_ids(T)
    M = reference.gate(ModelAdapter(model), ids, rollout="flow")
    M_ind = independent_flow_gate(model, ids)
    # HF's eager softmax runs in float32 for some archs, hence 1e-5 rather than float64 precision.
    assert rel_err(M, M_ind) < 1e-5
    assert abs(float(M.sum()) - 1) < 1e-12 and (M >= 0).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reference_rollout_matches_independent_chain(arch):
    # rollout="reference" needs H_kv = H: give llama full kv heads.
    model = f64(arch, **({"num_key_value_heads": 4} if arch == "llama" else {}))
    ids = random_ids(T)
    adapter = ModelAdapter(model)
    X = adapter.embed(ids)
    out, _, attn_mods = hf_eager_run(model, X, hidden_states=True)
    H = model.config.num_attention_heads
    dh = model.config.hidden_size // H
    for last_k in (None, 1):
        first = 0 if last_k is None else len(attn_mods) - last_k
        total = torch.zeros(T, dtype=torch.float64)
        for h in range(H):
            R = torch.eye(T, dtype=torch.float64)
            for layer in range(first, len(attn_mods)):
                N = 0.5 * out.attentions[layer][0, h].double() + 0.5 * torch.eye(T, dtype=torch.float64)
                R = (N / N.sum(-1, keepdim=True)) @ R
                resid = out.hidden_states[layer][0]  # raw residual stream entering layer `layer`
                attn = attn_mods[layer]
                if arch == "gpt2":
                    W_V = attn.c_attn.weight.T[2 * H * dh :][h * dh : (h + 1) * dh]
                    W_O = attn.c_proj.weight.T
                else:
                    W_V = attn.v_proj.weight[h * dh : (h + 1) * dh]
                    W_O = attn.o_proj.weight
                nu = ((resid @ W_V.T) @ W_O[:, h * dh : (h + 1) * dh].T).abs().sum(-1)
                total += R[-1] * nu
        M_ind = total.clamp_min(0) / total.clamp_min(0).sum()
        M = reference.gate(adapter, ids, rollout="reference", layers=last_k)
        assert rel_err(M, M_ind) < 1e-5, last_k


def test_reference_rollout_refuses_gqa():
    with pytest.raises(Exception, match="H_kv = H"):
        reference.gate(ModelAdapter(f64("llama")), random_ids(T), rollout="reference")


def explicit_hessian(adapter, ids, target):
    X = adapter.embed(ids).detach()
    t, d = X.shape

    def g(flat):
        return torch.log_softmax(adapter.last_logits(flat.reshape(t, d)), -1)[target]

    return torch.autograd.functional.hessian(g, X.reshape(-1)).reshape(t, d, t, d)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "phi3"])
def test_sensitivity_matches_explicit_hessian_blocks(arch):
    adapter = ModelAdapter(f64(arch))
    ids = random_ids(5)
    Hs = explicit_hessian(adapter, ids, target=3)
    probes = reference.draw_probes(5, 3, adapter.hidden_size, seed=4)
    S = reference.sensitivity(adapter, ids, 3, probes=probes)
    S_ind = torch.stack([(Hs[i, :, i, :] @ probes[i].T).abs().sum(0).mean() for i in range(5)])
    # RMSNorm in llama-family HF code casts to float32 internally, which bounds agreement near 1e-7.
    assert rel_err(S, S_ind) < 1e-6


def test_hvp_matches_finite_differences_gpt2():
    # GPT-2's layer norms stay in float64 (llama-style RMSNorm casts to float32), so FD is meaningful.
    adapter = ModelAdapter(f64("gpt2"))
    ids = random_ids(6)
    for layers in (None, 1):
        prob = reference.CurvatureProblem(adapter, ids, 5, layers=layers)
        v = torch.randn(prob.point.shape, dtype=torch.float64)

        def grad_at(point):
            x = point.clone().requires_grad_(True)
            return torch.autograd.grad(prob.g(x), x)[0]

        eps = 1e-5
        fd = (grad_at(prob.point + eps * v) - grad_at(prob.point - eps * v)) / (2 * eps)
        assert rel_err(prob.hvp(v), fd) < 1e-6


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gauss_newton_matches_explicit_matrix(arch):
    adapter = ModelAdapter(f64(arch))
    ids = random_ids(4)
    X = adapter.embed(ids).detach()
    t, d = X.shape
    J = torch.autograd.functional.jacobian(lambda f: adapter.last_logits(f.reshape(t, d)), X.reshape(-1))
    pi = torch.softmax(adapter.last_logits(X), -1)
    G = (J.T @ (torch.diag(pi) - torch.outer(pi, pi)) @ J).reshape(t, d, t, d)
    probes = reference.draw_probes(t, 2, d, seed=1)
    S = reference.sensitivity(adapter, ids, 2, probes=probes, curvature="gauss_newton")
    S_ind = torch.stack([(G[i, :, i, :] @ probes[i].T).abs().sum(0).mean() for i in range(t)])
    assert rel_err(S, S_ind) < 1e-6  # float32 casts inside RMSNorm, as above
    # PSD: every diagonal block's quadratic form is non-negative.
    assert all(float(probes[i, 0] @ G[i, :, i, :] @ probes[i, 0]) >= -1e-10 for i in range(t))


def test_lowrank_with_full_rank_is_exact():
    adapter = ModelAdapter(f64("gpt2"))
    ids = random_ids(4)
    probes = reference.draw_probes(4, 3, 32, seed=0)
    exact = reference.sensitivity(adapter, ids, 2, probes=probes)
    full = reference.sensitivity(adapter, ids, 2, probes=probes, hessian="lowrank", rank=4 * 32)
    assert rel_err(full, exact) < 1e-8
    low = reference.sensitivity(adapter, ids, 2, probes=probes, hessian="lowrank", rank=8)
    assert rel_err(low, exact) > 1e-6  # a real approximation, not the exact path in disguise


def test_layers_all_equals_embedding_curvature():
    # The residual entering layer 0 is X (+ position embeddings for GPT-2): same Hessian, same S.
    adapter = ModelAdapter(f64("gpt2"))
    ids = random_ids(5)
    probes = reference.draw_probes(5, 2, 32, seed=0)
    S_x = reference.sensitivity(adapter, ids, 4, probes=probes)
    S_all = reference.sensitivity(adapter, ids, 4, probes=probes, layers=adapter.num_layers)
    assert rel_err(S_all, S_x) < 1e-10
    S_last = reference.sensitivity(adapter, ids, 4, probes=probes, layers=1)
    assert rel_err(S_last, S_x) > 1e-3


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("mask", ["zero", "mean", "token"])
def test_information_matches_masked_hf_forwards(arch, mask):
    model = f64(arch)
    adapter = ModelAdapter(model)
    all_ids = random_ids(T + 2)  # positions after the target change nothing but the mean mask
    ids = all_ids[:T]
    vec = reference.mask_vector(adapter, all_ids, mask, mask_token_id=5)
    I = reference.information(adapter, ids, vec)
    table = model.get_input_embeddings().weight
    scale = float(getattr(model.get_input_embeddings(), "embed_scale", 1.0))
    expect_vec = {"zero": torch.zeros(table.shape[1], dtype=torch.float64), "mean": table[all_ids].mean(0),
                  "token": table[5]}[mask]
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    base = torch.log_softmax(eager(inputs_embeds=(table[ids] * scale)[None]).logits[0, -1], -1)
    for i in range(T):
        X = table[ids].clone()
        X[i] = expect_vec
        logq = torch.log_softmax(eager(inputs_embeds=(X * scale)[None]).logits[0, -1], -1)
        kl = float((base.exp() * (base - logq)).sum())
        assert abs(float(I[i]) - kl) <= 1e-6 * max(1.0, abs(kl)), (i, float(I[i]), kl)


def test_combine_formula_and_normalisation():
    M = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    S = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    I = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(reference.combine(M, S, I, 0.5, 0.5, "none"), M * (0.5 * S + 0.5 * I))
    torch.testing.assert_close(reference.combine(M, S, I, 0.3, 0.7, "sum"), M * (0.3 * S / 6 + 0.7 * I / 1))
    torch.testing.assert_close(reference.combine(M, None, None, 0.5, 0.5, "none"), M)
    torch.testing.assert_close(reference.combine(None, S, I, 1.0, 0.0, "none"), S)


def test_probes_are_seeded_rademacher_in_i_k_order():
    a = reference.draw_probes(3, 4, 5, seed=7)
    b = reference.draw_probes(3, 4, 5, seed=7)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(a, reference.draw_probes(3, 4, 5, seed=8))
    # Drawn in (i, k) order: a longer context keeps the first tokens' probes.
    assert torch.equal(reference.draw_probes(4, 4, 5, seed=7)[:3], a)
