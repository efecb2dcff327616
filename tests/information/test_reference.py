"""The information term's float64 reference against masked forwards run directly through HF (SPEC §3)."""

import copy

import pytest
import torch

from heta_fast.hf import ModelAdapter
from heta_fast.information import information_reference, mask_vector
from heta_fast.testing import TINY_ARCHS, frozen_float64, random_ids

T = 7  # context length (odd on purpose)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("mask", ["zero", "mean", "token"])
def test_information_matches_masked_hf_forwards(arch, mask):
    model = frozen_float64(arch)
    adapter = ModelAdapter(model)
    all_ids = random_ids(T + 2)  # positions after the target change nothing but the mean mask
    ids = all_ids[:T]
    vec = mask_vector(adapter, all_ids, mask, mask_token_id=5)
    I = information_reference(adapter, ids, vec)
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
