"""The fast gate M against its float64 reference, on every tiny architecture, with the same inputs.

The fast path runs the model in float32 (its dtype); the reference runs a float64 copy (the ``fast_and_reference``
fixture of tests/conftest.py). Tolerance relative to the largest value of the reference vector: 1e-4.
"""

import pytest

from heta_fast.gate import gate_fast, gate_reference
from heta_fast.testing import random_ids, rel_err

T = 11


@pytest.mark.parametrize("layers", [None, 1])
def test_gate_flow(fast_and_reference, layers):
    _, fast, ref = fast_and_reference
    ids = random_ids(T)
    M = gate_fast(fast, ids, "flow", layers)
    M_ref = gate_reference(ref, ids, rollout="flow", layers=layers)
    assert rel_err(M, M_ref) < 1e-4
    assert abs(float(M.sum()) - 1) < 1e-5


def test_gate_reference_rollout(fast_and_reference):
    arch, fast, ref = fast_and_reference
    ids = random_ids(T)
    if fast.num_kv_heads != fast.num_heads:
        with pytest.raises(Exception, match="H_kv = H"):
            gate_fast(fast, ids, "reference", None)
        return
    for layers in (None, 1):
        M = gate_fast(fast, ids, "reference", layers)
        M_ref = gate_reference(ref, ids, rollout="reference", layers=layers)
        assert rel_err(M, M_ref) < 1e-4
