"""The engine's pipeline steps checked against the same steps done by hand: windows, the sink lead, generation."""

import copy

import pytest
import torch

from heta_fast import Attributor
from heta_fast.engine import drop_lead, window_probes, window_starts
from heta_fast.gate.value_norms import normalise_gate
from heta_fast.probes import draw_probes
from heta_fast.testing import random_ids, rel_err, tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_window_average_equals_the_hand_computed_average(arch):
    """SPEC §4: each window is scored with the target appended, per-token averages over the windows that cover
    the token, M re-normalised. Done by hand here from one plain attribution per window."""
    attributor = Attributor(tiny_model(arch))
    ids = random_ids(14, seed=3)
    t, W, m = 13, 6, 2
    target = int(ids[t])
    probes = draw_probes(t, m, attributor.adapter.hidden_size, seed=9).float()
    windowed = attributor.attribute(ids[: t + 1], probes=probes, window=W, overlap=0.5)

    starts = window_starts(t, W, 0.5)
    assert starts == [0, 3, 6, 7]
    sums = {name: torch.zeros(t, dtype=torch.float64) for name in ("M", "S", "I")}
    counts = torch.zeros(t, dtype=torch.float64)
    for s in starts:
        run = attributor.attribute(torch.cat([ids[s : s + W], ids.new_tensor([target])]), probes=probes[s : s + W])
        for name in sums:
            sums[name][s : s + W] += torch.tensor(getattr(run, name), dtype=torch.float64)
        counts[s : s + W] += 1
    assert (counts > 0).all()
    expect = {name: acc / counts for name, acc in sums.items()}
    expect["M"] = expect["M"] / expect["M"].sum()
    for name, want in expect.items():
        assert rel_err(getattr(windowed, name), want) < 1e-5, name
    assert abs(sum(windowed.M) - 1) < 1e-9


def test_window_probes_put_zero_rows_for_the_lead():
    full = draw_probes(5, 2, 3, seed=1)
    w = window_probes(full, 1, 3, lead=1)
    assert w.shape == (4, 2, 3) and torch.equal(w[0], torch.zeros(2, 3)) and torch.equal(w[1:], full[1:4])
    assert window_probes(None, 0, 3, lead=1) is None


def test_drop_lead_renormalises_m_and_reports_the_sink_mass():
    M = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    S, I = torch.tensor([9.0, 1.0, 2.0]), torch.tensor([8.0, 3.0, 4.0])
    M2, S2, I2, mass = drop_lead(M, S, I, 1)
    assert mass == pytest.approx(0.6)
    torch.testing.assert_close(M2, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert S2.tolist() == [1.0, 2.0] and I2.tolist() == [3.0, 4.0]
    assert drop_lead(M, S, I, 0) == (M, S, I, None)
    # No gate mass left on the real tokens: uniform, as SPEC §1 prescribes for Z = 0.
    torch.testing.assert_close(normalise_gate(torch.zeros(4)), torch.full((4,), 0.25))


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_generate_explains_the_models_own_greedy_tokens(arch):
    """``generate=n`` explains exactly the tokens transformers' greedy ``generate`` produces."""
    model = tiny_model(arch)
    untouched = copy.deepcopy(model)
    ids = random_ids(6, seed=5)
    with torch.no_grad():
        greedy = untouched.generate(ids[None], attention_mask=torch.ones(1, 6, dtype=torch.long), max_new_tokens=4,
                                    do_sample=False, pad_token_id=0)[0, 6:]
    res = Attributor(model).attribute(ids, generate=4, num_probes=1, components=["M"])
    assert [r.target_id for r in res] == greedy.tolist()
    assert [r.target_position for r in res] == [6, 7, 8, 9]
    assert res[-1].token_ids[:6] == ids.tolist() and res[-1].token_ids[6:] == greedy.tolist()[:3]
