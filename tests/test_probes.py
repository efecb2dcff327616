"""Seeded probes: Rademacher, drawn in (i, k) order, a prefix of the context's draw (SPEC §2)."""

import pytest
import torch

from heta_fast.errors import HetaInputError
from heta_fast.probes import check_probes, draw_probes


def test_probes_are_seeded_rademacher_in_i_k_order():
    a = draw_probes(3, 4, 5, seed=7)
    b = draw_probes(3, 4, 5, seed=7)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(a, draw_probes(3, 4, 5, seed=8))
    # Drawn in (i, k) order: a longer context keeps the first tokens' probes.
    assert torch.equal(draw_probes(4, 4, 5, seed=7)[:3], a)


def test_probe_shape_is_checked():
    check_probes(torch.ones(3, 2, 5), 3, 5)
    for bad in (torch.ones(3, 2), torch.ones(4, 2, 5), torch.ones(3, 2, 6), torch.ones(3, 0, 5)):
        with pytest.raises(HetaInputError, match="probes must have shape"):
            check_probes(bad, 3, 5)
