"""Half precision and dispatched models: explained as loaded, without the user converting them.

A bfloat16 or float16 model runs its products in its own dtype while heta_fast's reductions (softmax, KL,
value norms, S's accumulation and the low-rank algebra) run in float32. Its M, S and I then agree with the
float32 model's (same probes) to within the stated tolerances, relative to the largest value. Measured on
every tiny architecture (worst case over them, 10 tokens): bfloat16 M 1.9e-2, S 4.7e-2, I 4.7e-2; float16
M 2.8e-3, S 1.2e-2, I 5.1e-3. The plain computation in the same dtype (the reference components run on the
half-precision model itself) is off by as much (bfloat16 up to 5.3e-2, float16 up to 1.2e-2): this is the
precision of the model's own forward passes, not something heta_fast adds.
"""

import copy

import pytest
import torch

from heta_fast import Attributor
from heta_fast.curvature.batched import bytes_per_direction, graph_bytes
from heta_fast.information.batched import mask_chunk_size, mask_row_bytes
from heta_fast.models import MORE_TINY_ARCHS, TINY_ARCHS, tiny_model
from heta_fast.probes import draw_probes
from heta_fast.testing import random_ids, rel_err

# Relative to the largest value of each component, about twice the worst case measured (module docstring).
TOLERANCE = {torch.bfloat16: 0.1, torch.float16: 0.025}
T = 9


@pytest.fixture(scope="module", params=TINY_ARCHS + MORE_TINY_ARCHS)
def float32_run(request):
    model = tiny_model(request.param)
    ids = random_ids(T + 1, seed=2)
    probes = draw_probes(T, 2, model.config.get_text_config().hidden_size, seed=3).float()
    return request.param, model, ids, probes, Attributor(model).attribute(ids, probes=probes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_model_agrees_with_float32(float32_run, dtype):
    arch, model, ids, probes, want = float32_run
    half = copy.deepcopy(model).to(dtype)
    got = Attributor(half).attribute(ids, probes=probes)
    assert half.dtype == dtype  # explained as loaded, not converted
    for name in ("M", "S", "I", "scores"):
        err = rel_err(getattr(got, name), getattr(want, name))
        assert err < TOLERANCE[dtype], (arch, name, err)
    assert abs(sum(got.M) - 1) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_low_rank_and_reference_engine(dtype):
    model = tiny_model("llama")
    ids = random_ids(T + 1, seed=2)
    half = Attributor(copy.deepcopy(model).to(dtype))
    lowrank = dict(hessian="lowrank", rank=16, num_probes=2, components=["S"])
    # The range finder's QR and products run in float32 (there is no half-precision QR on the CPU).
    assert rel_err(half.attribute(ids, **lowrank).S, Attributor(model).attribute(ids, **lowrank).S) < TOLERANCE[dtype]
    # The reference engine runs on a float64 copy of the half-precision weights.
    fast = half.attribute(ids, num_probes=2)
    ref = half.attribute(ids, num_probes=2, engine="reference")
    assert half.engine._reference_adapter.dtype == torch.float64 and half.adapter.dtype == dtype
    for name in ("M", "S", "I"):
        assert rel_err(getattr(fast, name), getattr(ref, name)) < TOLERANCE[dtype], name


def test_memory_budget_counts_the_models_dtype():
    """Chunk and batch sizes follow the model's element size: half precision fits twice as much, except the
    attention scores a direction's second backward computes in float32 either way."""
    full = Attributor(tiny_model("llama")).adapter
    half = Attributor(tiny_model("llama").to(torch.bfloat16)).adapter
    assert graph_bytes(full, 64, 64) == 2 * graph_bytes(half, 64, 64)
    assert bytes_per_direction(full, 64, 64) / 2 < bytes_per_direction(half, 64, 64) < bytes_per_direction(full, 64, 64)
    t, mask_bytes = 1024, 1024 * 1024  # the KL pass's [q, k] boolean mask: a byte per score in any dtype
    assert mask_row_bytes(full, t) - mask_bytes == 2 * (mask_row_bytes(half, t) - mask_bytes)
    budget = 3 * mask_row_bytes(full, t)  # three masks of 1,024 rows in float32, four in bfloat16 on this tiny model
    assert (mask_chunk_size(full, t, budget), mask_chunk_size(half, t, budget)) == (3, 4)


def test_device_map_models(tmp_path):
    """Loaded with device_map (accelerate), and dispatched with accelerate's hooks on every block."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    ids = random_ids(T + 1, seed=2)
    want = Attributor(model).attribute(ids, num_probes=2)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu", dtype=torch.bfloat16)
    got = Attributor(loaded).attribute(ids, num_probes=2)
    assert loaded.dtype == torch.bfloat16
    for name in ("M", "S", "I", "scores"):
        assert rel_err(getattr(got, name), getattr(want, name)) < TOLERANCE[torch.bfloat16], name

    hooked = AutoModelForCausalLM.from_pretrained(tmp_path)
    blocks = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head"]
    hooked = dispatch_model(hooked, device_map=dict.fromkeys(blocks, "cpu"), force_hooks=True)
    assert hasattr(hooked.model.layers[0], "_hf_hook")
    before = hooked(ids[None]).logits
    got = Attributor(hooked).attribute(ids, num_probes=2)
    for name in ("M", "S", "I", "scores"):
        assert rel_err(getattr(got, name), getattr(want, name)) < 1e-5, name
    assert torch.equal(hooked(ids[None]).logits, before)
