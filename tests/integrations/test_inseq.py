"""HETA as the Inseq method "heta", against the real inseq package: every value Inseq reports is the value
heta_fast's own API gives for that prefix and target; options pass through; show, save and aggregate work.

Tiny random-weight model and a character tokenizer built in-process (a real ``PreTrainedTokenizerFast``,
which Inseq needs), so nothing is downloaded.
"""

import math
import subprocess
import sys
import types

import pytest
import torch

from heta_fast import Attributor, HetaInputError, UnsupportedModelError
from heta_fast.testing import hf_char_tokenizer, tiny_model, torch_threads

inseq = pytest.importorskip("inseq", reason="inseq not installed: pip install -r requirements/integrations.txt "
                                            "&& pip install --no-deps -r requirements/no-deps/inseq.txt")
heta_inseq = pytest.importorskip("heta_fast.integrations.inseq")

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tok():
    return hf_char_tokenizer()


@pytest.fixture(scope="module")
def heta_model(tok):
    return inseq.load_model(tiny_model("llama"), "heta", tokenizer=tok, num_probes=2)


@pytest.fixture(scope="module")
def direct(tok):
    """heta_fast's own API on a separate copy of the same weights: the values Inseq must report."""
    return Attributor(tiny_model("llama"), tok)


def _check_against_direct(seq, direct, **options):
    """Every generated step's score, M, S, I equal heta_fast's result for that prefix and target."""
    ids = [t.id for t in seq.target]
    start = seq.attr_pos_start
    for k, pos in enumerate(range(start, seq.attr_pos_end)):
        want = direct.attribute(ids[: pos + 1], target=-1, **options)
        lead = pos - len(want.scores)  # special tokens in front (a BOS) are the sink: not scored, 0 in Inseq's row
        assert lead in (0, 1)
        got = seq.target_attributions[:, k]
        assert (got[:lead] == 0).all()
        torch.testing.assert_close(got[lead:pos], torch.tensor(want.scores, dtype=torch.float32), rtol=1e-5, atol=1e-7)
        assert torch.isnan(got[pos:]).all()  # the target and what follows it are not in its context
        for name in ("M", "S", "I"):
            comp = seq.sequence_scores[f"heta_{name}"][:, k]
            assert comp.shape == got.shape
            torch.testing.assert_close(comp[lead:pos], torch.tensor(getattr(want, name), dtype=torch.float32),
                                       rtol=1e-5, atol=1e-7)
        if want.sink_gate_mass is not None:
            assert math.isclose(float(seq.step_scores["heta_sink_gate_mass"][k]), want.sink_gate_mass, rel_tol=1e-5)


def test_heta_is_registered_on_import():
    assert "heta" in inseq.list_feature_attribution_methods()


def test_attribution_matches_heta_fast_and_options_pass_through(heta_model, direct, tok):
    out = heta_model.attribute("hello", "hello wor", seed=1, show_progress=False)
    (seq,) = out.sequence_attributions
    assert [t.token for t in seq.target] == ["<s>", *"hello wor"] and seq.attr_pos_start == 6
    assert seq.target_attributions.shape == (10, 4)
    assert out.info["attribution_method"] == "heta" and out.info["attribution_args"] == {"seed": 1}
    # num_probes=2 from load_model, seed=1 from this call; the BOS is the sink (special_tokens="sink"): its gate
    # mass is the sink step score (checked against heta_fast's own sink_gate_mass in _check_against_direct).
    _check_against_direct(seq, direct, num_probes=2, seed=1)
    assert seq.step_scores["heta_sink_gate_mass"].shape == (4,)
    other = heta_model.attribute("hello", "hello wor", seed=2, show_progress=False).sequence_attributions[0]
    assert not torch.equal(torch.nan_to_num(other.sequence_scores["heta_S"]),
                           torch.nan_to_num(seq.sequence_scores["heta_S"]))  # the seed reached the probes
    # A preset per call replaces the default preset; the load-time num_probes=2 still applies on top.
    fast = heta_model.attribute("hello", "hello w", preset="fast", show_progress=False).sequence_attributions[0]
    _check_against_direct(fast, direct, preset="fast", num_probes=2)
    one = heta_model.attribute("hello", "hello w", components=["M"], show_progress=False).sequence_attributions[0]
    assert set(one.sequence_scores) == {"heta_M"}
    torch.testing.assert_close(one.target_attributions, one.sequence_scores["heta_M"], equal_nan=True)


def test_sink_mass_is_a_step_score_and_probability_steps_run_alongside(direct):
    model = inseq.load_model(tiny_model("llama"), "heta", tokenizer=hf_char_tokenizer(add_bos=False), num_probes=2)
    out = model.attribute("hi there", "hi there you", sink_token=0, step_scores=["probability"],
                          show_progress=False)
    seq = out.sequence_attributions[0]
    assert set(seq.step_scores) == {"heta_sink_gate_mass", "probability"}
    no_bos = Attributor(tiny_model("llama"), hf_char_tokenizer(add_bos=False))
    _check_against_direct(seq, no_bos, num_probes=2, sink_token=0)
    # Inseq's own probability step score agrees with the target log-probability heta_fast reports (without
    # a sink: HETA's log-probability is the one of the sequence it explains, sink included).
    ids = [t.id for t in seq.target]
    last = no_bos.attribute(ids, num_probes=1, components=("M",), sink_token=None)
    assert math.isclose(float(seq.step_scores["probability"][-1]), math.exp(last.target_logprob), rel_tol=1e-4)


def test_show_save_and_aggregate(heta_model, tmp_path):
    out = heta_model.attribute("hello", "hello wor", show_progress=False)
    seq = out.sequence_attributions[0]
    page = out.show(display=False, return_html=True)
    top = float(torch.nan_to_num(seq.target_attributions).max())
    assert "Target Saliency Heatmap" in page and "<th>&lt;s&gt;</th>" in page
    assert f">{round(top, 3)}</th>" in page  # the largest HETA score is a cell of Inseq's table
    path = tmp_path / "heta.json"
    out.save(str(path), overwrite=True)
    back = inseq.FeatureAttributionOutput.load(str(path)).sequence_attributions[0]
    torch.testing.assert_close(back.target_attributions, seq.target_attributions, equal_nan=True)
    for key, val in seq.sequence_scores.items():
        torch.testing.assert_close(back.sequence_scores[key], val, equal_nan=True)
    # Span aggregation of "he" (positions 1-2) and " w" (6-7: generation steps 0-1) with Inseq's absmax,
    # checked by hand: rows merge along the text, columns along the generated tokens.
    spans = [(1, 3), (6, 8)]
    agg = seq.aggregate("spans", target_spans=spans)
    assert [t.token for t in agg.target] == ["<s>", "he", "l", "l", "o", " w", "o", "r"]
    raw = seq.target_attributions
    assert agg.target_attributions.shape == (8, 3)
    block = raw[1:3, 0:2].flatten()
    torch.testing.assert_close(agg.target_attributions[1, 0], block[block.abs().argmax()])
    torch.testing.assert_close(agg.target_attributions[3, 2], raw[4, 3])  # "l" (4) for "r" (step 3)
    agg.show(display=False)
    # Each component aggregates the same way through component().
    m = heta_inseq.component(seq, "M")
    torch.testing.assert_close(m.target_attributions, seq.sequence_scores["heta_M"], equal_nan=True)
    m_agg = m.aggregate("spans", target_spans=spans)
    assert m_agg.target_attributions.shape == (8, 3)
    rawm = seq.sequence_scores["heta_M"]
    torch.testing.assert_close(m_agg.target_attributions[3, 1], rawm[4, 2])  # "l" (4) for "o" (step 2)
    mblock = rawm[1:3, 0:2].flatten()
    torch.testing.assert_close(m_agg.target_attributions[1, 0], mblock[mblock.abs().argmax()])
    m_agg.show(display=False)
    scores = out.get_scores_dicts()[0]["target_attributions"]
    assert len(scores) == 4


def test_batched_generation_handles_left_padding(tok, direct):
    model = inseq.load_model(tiny_model("llama"), "heta", tokenizer=tok, num_probes=1)
    out = model.attribute(["hi", "hello"], generation_args={"max_new_tokens": 3, "do_sample": False}, batch_size=2,
                          show_progress=False)
    assert len(out.sequence_attributions) == 2
    for seq in out.sequence_attributions:
        _check_against_direct(seq, direct, num_probes=1)


def test_step_function_places_each_row_at_its_unpadded_positions(heta_model, direct):
    # Two prefixes of different lengths, left-padded as Inseq pads decoder-only batches.
    ids = torch.tensor([[1, 1, 0, 10, 7], [0, 10, 7, 14, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    targets = torch.tensor([[20], [17]])
    args = {"inputs": (ids,), "additional_forward_args": (ids, targets, None, mask, False, [])}
    step = heta_model.attribution_method.attribute_step(args, {"seed": 4})
    assert step.target_attributions.shape == (2, 5)
    for b, n_pad in ((0, 2), (1, 0)):
        want = direct.attribute([*ids[b, n_pad:].tolist(), int(targets[b])], num_probes=2, seed=4)
        first = 5 - len(want.scores)  # padding, then the BOS (id 0: the sink, not scored)
        assert first == n_pad + 1 and (step.target_attributions[b, :first] == 0).all()
        torch.testing.assert_close(step.target_attributions[b, first:], torch.tensor(want.scores, dtype=torch.float32))
        torch.testing.assert_close(step.sequence_scores["heta_I"][b, first:], torch.tensor(want.I, dtype=torch.float32))


def test_bad_use_gets_clear_errors(heta_model, tok):
    with pytest.raises(HetaInputError, match="attributed_fn='logit_fn' cannot be used"):
        heta_model.attribute("hello", "hello w", attributed_fn="logit", show_progress=False)
    with pytest.raises(HetaInputError, match="num_probes must be an integer >= 1"):
        heta_model.attribute("hello", "hello w", num_probes=0, show_progress=False)
    with pytest.raises(HetaInputError, match="unknown HETA option"):
        inseq.load_model(tiny_model("llama"), "heta", tokenizer=tok, probes_per_token=3)
    with pytest.raises(HetaInputError, match="choose one of scores, M, S, I"):
        heta_inseq.component(heta_model.attribute("hello", "hello w", show_progress=False)
                             .sequence_attributions[0], "Q")
    fake = types.SimpleNamespace(is_encoder_decoder=True, model=torch.nn.Linear(1, 1))
    with pytest.raises(UnsupportedModelError, match="decoder-only"):
        heta_inseq.HetaAttribution(fake)


def test_heta_fast_imports_without_inseq_and_the_adapter_names_the_install(tmp_path):
    blocker = tmp_path / "inseq"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('inseq is blocked for this test')\n")
    code = ("import heta_fast\n"
            "try:\n    import heta_fast.integrations.inseq\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "ERR heta_fast.integrations.inseq needs Inseq" in out.stdout
    assert "heta_fast[inseq]" in out.stdout and "--no-deps inseq" in out.stdout
