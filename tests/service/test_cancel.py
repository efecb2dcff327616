"""``Attributor.attribute(should_stop=...)``, the hook the service stops requests with: checked between chunks
of work on every path, results unchanged when it never fires, nothing more computed once it fires.

(Library behaviour; it lives beside the service tests that rely on it.)
"""

import pytest
import torch

from heta_fast import AttributionSequence, Attributor
from heta_fast.errors import HetaCancelled
from heta_fast.testing import CharTokenizer, tiny_model


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_model("llama"), CharTokenizer())


def _scores(res):
    return [r.scores for r in res] if isinstance(res, AttributionSequence) else [res.scores]


CASES = {
    "exact S": ({}, {}),
    "low-rank S": ({"hessian": "lowrank", "rank": 4}, {}),
    "M and I only": ({"components": ("M", "I"), "max_memory": 2**20}, {}),
    "windows": ({"window": 4, "components": ("M",)}, {}),
    "continuation (shared passes)": ({"num_probes": 1}, {"target": "xyz"}),
    "generate": ({"components": ("M",)}, {"generate": 3}),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_should_stop_is_checked_between_chunks_and_stops_there(attributor, case):
    options, call = CASES[case]
    text = "hello there, world" * 3
    torch.manual_seed(0)
    plain = attributor.attribute(text, **call, **options)
    checks = []
    watched = attributor.attribute(text, should_stop=lambda: checks.append(1) or False, **call, **options)
    assert _scores(watched) == _scores(plain)  # the hook changes nothing while it says "go on"
    assert len(checks) >= 3, f"only {len(checks)} checks"

    stop_at = 2
    seen = []

    def stop():
        seen.append(1)
        return len(seen) >= stop_at

    with pytest.raises(HetaCancelled):
        attributor.attribute(text, should_stop=stop, **call, **options)
    assert len(seen) == stop_at  # it raised at the first True, before any further chunk
