"""The whole pipeline, fast engine against reference engine, on every tiny architecture (tolerance 1e-4)."""

from heta_fast import Attributor
from heta_fast.testing import random_ids, rel_err

T = 11


def test_end_to_end_engines_agree(fast_and_reference):
    arch, fast, _ = fast_and_reference
    attributor = Attributor(fast.model)
    ids = random_ids(T)
    a = attributor.attribute(ids, num_probes=2, seed=5)
    b = attributor.attribute(ids, num_probes=2, seed=5, engine="reference")
    for name in ("M", "S", "I", "scores"):
        assert rel_err(getattr(a, name), getattr(b, name)) < 1e-4, name
