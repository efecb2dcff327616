"""The fast information term I against its float64 reference, on every tiny architecture, with the same inputs.

The fast path runs the model in float32 (its dtype); the reference runs a float64 copy (the ``fast_and_reference``
fixture of tests/conftest.py). Tolerance relative to the largest value of the reference vector: 1e-5.
"""

import pytest

from heta_fast.information import information_reference, mask_vector
from heta_fast.information.batched import information_batched
from heta_fast.testing import random_ids, rel_err

T = 11


@pytest.mark.parametrize("mask", ["zero", "mean", "token"])
@pytest.mark.parametrize("chunk", [1, 4, T], ids=["chunk1", "chunk4", "one_chunk"])
def test_information(fast_and_reference, mask, chunk):
    _, fast, ref = fast_and_reference
    all_ids = random_ids(T + 3)
    ids = all_ids[:T]
    I = information_batched(fast, ids, mask_vector(fast, all_ids, mask, 3), chunk_size=chunk)
    I_ref = information_reference(ref, ids, mask_vector(ref, all_ids, mask, 3))
    assert rel_err(I, I_ref) < 1e-5
