"""The gate's float64 reference against HF's own eager attention and an independent re-implementation of SPEC §1.

Every check recomputes M without heta_fast's recording attention: HF's eager attention with
``output_attentions`` and projection outputs caught by forward hooks.
"""

import pytest
import torch

from heta_fast.gate import gate_reference
from heta_fast.hf import ModelAdapter
from heta_fast.testing import TINY_ARCHS, frozen_float64, hf_eager_run, random_ids, rel_err

T = 7  # context length (odd on purpose)


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
    model = frozen_float64(arch)
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
    model = frozen_float64(arch)
    ids = random_ids(T)
    M = gate_reference(ModelAdapter(model), ids, rollout="flow")
    M_ind = independent_flow_gate(model, ids)
    # HF's eager softmax runs in float32 for some archs, hence 1e-5 rather than float64 precision.
    assert rel_err(M, M_ind) < 1e-5
    assert abs(float(M.sum()) - 1) < 1e-12 and (M >= 0).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reference_rollout_matches_independent_chain(arch):
    # rollout="reference" needs H_kv = H: give llama full kv heads.
    model = frozen_float64(arch, **({"num_key_value_heads": 4} if arch == "llama" else {}))
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
        M = gate_reference(adapter, ids, rollout="reference", layers=last_k)
        assert rel_err(M, M_ind) < 1e-5, last_k


def test_reference_rollout_refuses_gqa():
    with pytest.raises(Exception, match="H_kv = H"):
        gate_reference(ModelAdapter(frozen_float64("llama")), random_ids(T), rollout="reference")
