"""Unit-level S and I (SPEC §6): the fast paths against the float64 references on every tiny architecture,
and single-token units against the token level.

Same inputs on both sides (ids, probes, mask row); the fast path runs the float32 model, the reference a
float64 copy (the ``fast_and_reference`` fixture). Tolerances relative to the reference's largest value:
I 1e-5, exact S 1e-4, low-rank S 1e-3 (a QR of nearly rank-deficient Y amplifies float32 noise), as for tokens.
"""

import pytest
import torch

from heta_fast.curvature import sensitivity_batched, sensitivity_reference
from heta_fast.information import information_batched, information_reference, mask_vector
from heta_fast.probes import draw_probes
from heta_fast.testing import random_ids, rel_err

T = 11
# A partition with units of 1, 3, 2, 4 and 1 tokens, and a subset of single tokens (what refine= scores).
UNITS = [(0, 1), (1, 4), (4, 6), (6, 10), (10, 11)]
SUBSET = [(2, 3), (3, 4), (7, 8)]


@pytest.mark.parametrize("units,chunk", [(UNITS, 1), (UNITS, None), (SUBSET, 3)],
                         ids=["partition_chunk1", "partition_auto", "token_subset_chunk3"])
def test_information_units(fast_and_reference, units, chunk):
    _, fast, ref = fast_and_reference
    all_ids = random_ids(T + 2)
    ids = all_ids[:T]
    I = information_batched(fast, ids, mask_vector(fast, all_ids, "mean", None), units=units, chunk_size=chunk)
    I_ref = information_reference(ref, ids, mask_vector(ref, all_ids, "mean", None), units)
    assert I.shape == (len(units),)
    # Relative to the largest reference value: the subset leaves out the last token's KL (the largest, ~1 on
    # gpt2), so the same ~5e-7 float32 error is a larger share of the subset's maximum (~0.03).
    assert rel_err(I, I_ref) < (1e-5 if units is UNITS else 5e-5)


@pytest.mark.parametrize(
    "kw",
    [{"max_memory": 1 << 20}, {}, {"curvature": "gauss_newton"}, {"layers": 1}, {"hessian": "lowrank", "rank": 12},
     {"hessian": "lowrank", "rank": 12, "lowrank_passes": 1}],
    ids=["exact_small_batches", "exact", "gauss_newton", "last_layer", "lowrank12", "lowrank12_one_pass"],
)
def test_sensitivity_units(fast_and_reference, kw):
    _, fast, ref = fast_and_reference
    ids = random_ids(T)
    probes = draw_probes(T, 3, fast.hidden_size, seed=3)
    S = sensitivity_batched(fast, ids, 7, probes=probes.float(), units=UNITS, **kw)
    kw.pop("max_memory", None)
    S_ref = sensitivity_reference(ref, ids, 7, probes=probes, units=UNITS, **kw)
    assert S.shape == (len(UNITS),)
    assert rel_err(S, S_ref) < (1e-3 if "rank" in kw else 1e-4)


def test_single_token_units_are_the_token_level(fast_and_reference):
    """Units of one token each give exactly today's token results, on both paths (same floats on the fast
    path: the same chunks, the same products, zeros added)."""
    _, fast, ref = fast_and_reference
    all_ids = random_ids(T + 2)
    ids = all_ids[:T]
    singles = [(i, i + 1) for i in range(T)]
    vec = mask_vector(fast, all_ids, "zero", None)
    assert torch.equal(information_batched(fast, ids, vec, units=singles), information_batched(fast, ids, vec))
    probes = draw_probes(T, 2, fast.hidden_size, seed=5)
    for kw in ({}, {"hessian": "lowrank", "rank": 8}):
        S_tok = sensitivity_batched(fast, ids, 7, probes=probes.float(), **kw)
        S_units = sensitivity_batched(fast, ids, 7, probes=probes.float(), units=singles, **kw)
        assert torch.allclose(S_units, S_tok, rtol=1e-6, atol=0), kw
    S_ref = sensitivity_reference(ref, ids, 7, probes=probes, units=singles)
    assert torch.allclose(S_ref, sensitivity_reference(ref, ids, 7, probes=probes), rtol=1e-12, atol=0)
    I_ref_vec = mask_vector(ref, all_ids, "zero", None)
    assert torch.equal(information_reference(ref, ids, I_ref_vec, singles), information_reference(ref, ids, I_ref_vec))
