"""The KL pass's memory estimate (``mask_row_bytes``) against live memory measured in a fresh process.

The masked suffixes of a chunk run on 2 random-weight layers of a real model's shape; the peak above the
clean state (cache included) must be covered by the estimate and within 2x of it, so the budget neither
overflows ``max_memory`` nor refuses contexts that fit (the estimate used to count every head's scores,
6–11x the measured peak, which no fused attention holds).
"""

import json
import textwrap

import pytest

from heta_fast.hf import ModelAdapter
from heta_fast.information.batched import mask_chunk_size, mask_row_bytes
from heta_fast.testing import live_memory_child, tiny_model

MEASURE_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from heta_fast.hf import ModelAdapter
    from heta_fast.information import batched, mask_vector
    from heta_fast.models import tiny_model
    from heta_fast.profiling import reset_peak_rss, status_kib

    torch.set_num_threads(1)
    t, masks, d, ffn, heads, kv_heads, head_dim = (int(x) for x in sys.argv[1:])
    model = tiny_model("llama", hidden_size=d, intermediate_size=ffn, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, head_dim=head_dim, num_hidden_layers=2,
                       max_position_embeddings=t + 8)
    adapter = ModelAdapter(model)
    ids = torch.randint(3, 97, (t,), generator=torch.Generator().manual_seed(0))
    vec = mask_vector(adapter, ids, "zero", None)
    start = []
    shared = batched.shared_prefix_cache
    def mark(cache, a, n):  # the clean forward and its cache are held by then; the masked suffixes come after
        if not start:
            start.append(status_kib("VmRSS"))
            reset_peak_rss()
        return shared(cache, a, n)
    batched.shared_prefix_cache = mark
    batched.information_batched(adapter, ids[:64], vec, units=[(1, 2)], chunk_size=1)  # warm up
    start.clear()
    units = [(1 + j, 2 + j) for j in range(masks)]  # suffixes of t − 1 tokens: the longest rows
    batched.information_batched(adapter, ids, vec, units=units, chunk_size=masks)
    print(json.dumps({"measured": (status_kib("VmHWM") - start[0]) * 1024,
                      "estimate": masks * batched.mask_row_bytes(adapter, t)}))
    """
)

SMOLLM2 = (576, 1536, 9, 3, 64)  # the default model's layer: width, MLP width, heads, KV heads, head width
QWEN25_05B = (896, 4864, 14, 2, 64)  # a wide MLP


@pytest.mark.parametrize("t, masks, shape", [(2048, 1, SMOLLM2), (2048, 4, SMOLLM2), (4096, 2, SMOLLM2),
                                             (1024, 4, QWEN25_05B)])
def test_the_estimate_covers_a_measured_chunk(t, masks, shape):
    """Measured (2026-11-30, CPU): SmolLM2 shape 59 / 221 MiB against 94 / 376 MiB estimated (2,048 tokens, 1 / 4
    masks), 234 against 392 MiB (4,096 tokens, 2 masks); Qwen2.5-0.5B shape 285 against 400 MiB (1,024, 4)."""
    r = json.loads(live_memory_child(MEASURE_CHILD, t, masks, *shape))
    assert r["measured"] <= r["estimate"] <= 2 * r["measured"], r


def test_soft_capped_attention_is_budgeted_with_its_scores():
    """Gemma-2 soft-caps its scores, so its attention runs eagerly and holds every head's scores and probabilities."""
    capped = ModelAdapter(tiny_model("gemma2"))
    assert capped.attention_softcap and not ModelAdapter(tiny_model("llama")).attention_softcap
    t = 4096
    assert mask_row_bytes(capped, t) > 2 * capped.num_heads * t * t * 4


def test_a_long_context_that_fits_is_not_refused():
    """8,192 tokens on the default model's layer shape fit an 8 GiB budget with chunks of several masks."""
    adapter = ModelAdapter(tiny_model("llama", hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                                      num_key_value_heads=3, max_position_embeddings=8200))
    assert mask_chunk_size(adapter, 8192, 8 * 2**30) > 4
