"""The whole pipeline, fast engine against reference engine, on every tiny architecture (tolerance 1e-4; S of
the default low-rank path 1e-3)."""

import pytest

from heta_fast import Attributor
from heta_fast.testing import random_ids, rel_err

T = 11


@pytest.mark.parametrize("hessian", ["exact", "lowrank"])
def test_end_to_end_engines_agree(fast_and_reference, hessian):
    arch, fast, _ = fast_and_reference
    attributor = Attributor(fast.model)
    ids = random_ids(T)
    a = attributor.attribute(ids, num_probes=2, seed=5, hessian=hessian)
    b = attributor.attribute(ids, num_probes=2, seed=5, hessian=hessian, engine="reference")
    for name in ("M", "S", "I", "scores"):
        tol = 1e-3 if hessian == "lowrank" and name in ("S", "scores") else 1e-4
        assert rel_err(getattr(a, name), getattr(b, name)) < tol, name
