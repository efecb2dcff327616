"""More model families than TINY_ARCHS: the whole pipeline, fast engine against the float64 reference engine,
the fused LM head (logit scaling folded in) against the model's own logits; Falcon's other fused-QKV layouts
where transformers routes Falcon through its attention interface (5.25 on), and a clear refusal before that,
for ALiBi position biases and for any model computing attention inline.

Lighter than the per-component tests that run on TINY_ARCHS: each family runs the whole pipeline three times
(exact S; the default options, low-rank S; curvature over the last layer with Gauss–Newton and the mean mask),
about a second each.
"""

import pytest
import torch

from heta_fast import Attributor, UnsupportedModelError
from heta_fast.hf import ModelAdapter, head_logits
from heta_fast.models import MORE_TINY_ARCHS, tiny_model
from heta_fast.probes import draw_probes
from heta_fast.testing import random_ids, rel_err

T = 9  # context tokens; the target is token T


@pytest.fixture(scope="module", params=MORE_TINY_ARCHS)
def family(request):
    return request.param, Attributor(tiny_model(request.param))


@pytest.mark.parametrize("options", [{"hessian": "exact"}, {},
                                     {"hessian": "exact", "layers": 1, "curvature": "gauss_newton", "mask": "mean"}],
                         ids=["exact", "default", "last-layer-gauss-newton-mean"])
def test_fast_engine_equals_reference_engine(family, options):
    arch, attributor = family
    ids = random_ids(T + 1, seed=2)
    probes = draw_probes(T, 2, attributor.adapter.hidden_size, seed=3).float()
    fast = attributor.attribute(ids, probes=probes, **options)
    ref = attributor.attribute(ids, probes=probes, engine="reference", **options)
    # Low-rank S (the default): the range finder's QR of a nearly rank-deficient Y amplifies float32 noise.
    loose = 1e-3 if fast.options["hessian"] == "lowrank" else 1e-4
    for name in ("M", "S", "I", "scores"):
        assert rel_err(getattr(fast, name), getattr(ref, name)) < (loose if name in ("S", "scores") else 1e-4), \
            (arch, name)
    assert fast.target_logprob == pytest.approx(ref.target_logprob, abs=1e-5)


def test_fused_head_reproduces_the_models_logits(family):
    """The fast KL pass and the closed-form head curvature use head_logits(h, *lm_head()); Cohere's logit_scale
    and Granite's logits_scaling are folded into it, so it must give the model's own logits."""
    arch, attributor = family
    adapter = attributor.adapter
    X = adapter.embed(random_ids(T, seed=4))
    with torch.no_grad(), adapter.head_input() as seen:
        logits = adapter.forward(X, keep_last=False).logits[0]
    z = head_logits(seen[-1][0], *adapter.lm_head())
    torch.testing.assert_close(z, logits, rtol=1e-5, atol=1e-5)
    expected = {"granite": 1 / 4.0, "cohere": 0.5}.get(arch, 1.0)
    assert adapter.logit_multiplier == pytest.approx(expected)


def test_rollout_reference_reads_gpt_neox_fused_value_projection():
    """GPT-NeoX packs q, k, v per head in one projection; the official per-head chain needs W_V from it."""
    attributor = Attributor(tiny_model("gpt_neox"))
    ids = random_ids(T + 1, seed=6)
    fast = attributor.attribute(ids, rollout="reference", components=["M"])
    ref = attributor.attribute(ids, rollout="reference", components=["M"], engine="reference")
    assert rel_err(fast.M, ref.M) < 1e-4


# Falcon's fused-QKV layouts besides the grouped one of the "falcon" tiny model, as Falcon-7B, the original
# per-head interleaving and a sequential (not parallel) block have them.
FALCON_LAYOUTS = {
    "multi-query": dict(multi_query=True),
    "per-head-qkv": dict(multi_query=False),
    "sequential-block": dict(multi_query=False, parallel_attn=False),
}


def _tiny_falcon(**overrides):
    import transformers as tf

    cfg = tf.FalconConfig(vocab_size=97, hidden_size=32, ffn_hidden_size=48, num_hidden_layers=2,
                          num_attention_heads=4, initializer_range=0.3, **overrides)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


def test_falcon_support_is_what_transformers_says():
    """Falcon is supported exactly when this transformers routes its attention through the attention
    interface (5.25 on); before, it is refused when the Attributor is built, naming why."""
    import transformers as tf

    from heta_fast.models import MORE_TINY_ARCHS, falcon_supported

    assert falcon_supported() == tf.FalconForCausalLM._can_set_attn_implementation()
    assert ("falcon" in MORE_TINY_ARCHS) == falcon_supported()
    if not falcon_supported():
        with pytest.raises(UnsupportedModelError, match="attention interface"):
            Attributor(_tiny_falcon())


@pytest.mark.parametrize("layout", FALCON_LAYOUTS)
def test_falcon_layouts_equal_the_reference(layout):
    from heta_fast.models import falcon_supported

    model = _tiny_falcon(**FALCON_LAYOUTS[layout])
    if not falcon_supported():
        with pytest.raises(UnsupportedModelError, match="attention interface"):
            Attributor(model)
        return
    attributor = Attributor(model)
    ids = random_ids(T + 1, seed=2)
    probes = draw_probes(T, 2, attributor.adapter.hidden_size, seed=3).float()
    runs = [{"hessian": "exact"}]
    if attributor.adapter.num_kv_heads == attributor.adapter.num_heads:  # the official chain reads W_V
        runs.append({"rollout": "reference", "components": ["M"]})
    for options in runs:
        fast = attributor.attribute(ids, probes=probes, **options)
        ref = attributor.attribute(ids, probes=probes, engine="reference", **options)
        for name in options.get("components", ["M", "S", "I"]):
            assert rel_err(getattr(fast, name), getattr(ref, name)) < 1e-4, (layout, options, name)


def test_alibi_position_bias_is_refused_before_any_work():
    """ALiBi reaches attention as a bias inside the mask, which the gate's recomputed attention would miss."""
    from heta_fast.models import falcon_supported

    model = _tiny_falcon(alibi=True)
    match = "position bias" if falcon_supported() else "attention interface"
    with pytest.raises(UnsupportedModelError, match=match):
        Attributor(model)
    with pytest.raises(UnsupportedModelError, match=match):
        ModelAdapter(model)


def test_a_model_computing_attention_inline_is_refused(monkeypatch):
    """transformers' own flag for models that compute attention inside their modules (Falcon before 5.25)."""
    model = tiny_model("llama")
    monkeypatch.setattr(type(model), "_can_set_attn_implementation", classmethod(lambda cls: False))
    with pytest.raises(UnsupportedModelError, match="attention interface"):
        Attributor(model)
