"""Results as Captum's real ``LLMAttributionResult``: values and tokens in the right places, its plots run."""

import math
import subprocess
import sys

import pytest
import torch

from heta_fast import Attributor, HetaInputError
from heta_fast.testing import CharTokenizer, tiny_model

captum_llm = pytest.importorskip("captum.attr._core.llm_attr", reason="captum not installed: "
                                 "pip install -r requirements/integrations.txt")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from captum.attr import LLMAttributionResult  # noqa: E402


@pytest.fixture(scope="module")
def attributor():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Attributor(tiny_model("llama"), CharTokenizer())
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def single(attributor):
    return attributor.attribute("hello world", num_probes=2)


@pytest.fixture(scope="module")
def continuation(attributor):
    return attributor.attribute("hello", target=" wor", num_probes=2)


def _plots_run(res):
    for plot in (res.plot_token_attr, res.plot_seq_attr):
        fig, ax = plot(show=False)
        assert ax.get_xticklabels() and fig.get_size_inches()[0] > 0
        plt.close(fig)


def test_single_result_maps_onto_captum(single):
    res = single.to_captum()
    assert type(res) is LLMAttributionResult
    assert res.input_tokens == single.tokens and res.output_tokens == [single.target_token]
    assert res.seq_attr.tolist() == single.scores
    assert res.token_attr.shape == (1, len(single.tokens)) and res.token_attr[0].tolist() == single.scores
    assert res.output_probs.tolist() == [math.exp(single.target_logprob)]
    h = single.tokens.index("h")  # a token that occurs once (the BOS is the sink, not a token)
    assert res.seq_attr_dict[single.tokens[h]] == single.scores[h]  # captum's own view agrees
    for by in ("M", "S", "I"):
        assert single.to_captum(by=by).seq_attr.tolist() == getattr(single, by)
    _plots_run(res)


def test_sequence_rows_are_targets_over_the_longest_context(continuation):
    res = continuation.to_captum()
    last = continuation[-1]
    assert res.input_tokens == last.tokens and res.output_tokens == [r.target_token for r in continuation]
    assert res.token_attr.shape == (len(continuation), len(last.tokens)) == (4, 8)  # "hello" + " wo" (the BOS is the sink)
    for k, r in enumerate(continuation):
        n = len(r.tokens)
        assert res.token_attr[k, :n].tolist() == r.scores
        assert (res.token_attr[k, n:] == 0).all()  # at or after target k: not in its context
        assert res.input_tokens[n - 1] == r.tokens[-1]
    torch.testing.assert_close(res.seq_attr, res.token_attr.sum(0), rtol=0, atol=0)
    assert res.output_probs.tolist() == [math.exp(r.target_logprob) for r in continuation]
    _plots_run(res)


def test_bad_conversions_say_why(single, continuation):
    with pytest.raises(HetaInputError, match="choose one of scores, M, S, I"):
        single.to_captum(by="gate")
    only_m = Attributor(tiny_model("llama"), CharTokenizer()).attribute("jump", components=("M",))
    with pytest.raises(HetaInputError, match="'S' was not computed"):
        only_m.to_captum(by="S")
    assert only_m.to_captum(by="M").seq_attr.tolist() == only_m.M
    from heta_fast import AttributionSequence

    mixed = AttributionSequence([only_m, single])
    with pytest.raises(HetaInputError, match="same text"):
        mixed.to_captum()
    with pytest.raises(HetaInputError, match="no targets"):
        AttributionSequence().to_captum()


def test_without_captum_the_error_names_the_extra(single, tmp_path):
    # A child process where `import captum` fails: heta_fast still imports, to_captum says what to install.
    blocker = tmp_path / "captum"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('captum is blocked for this test')\n")
    path = tmp_path / "r.json"
    single.to_json(str(path))
    code = (
        "import heta_fast, sys\n"
        "from heta_fast import Attribution\n"
        f"r = Attribution.load({str(path)!r})\n"
        "assert 'captum' not in sys.modules\n"
        "try:\n    r.to_captum()\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "ERR to_captum() needs Captum" in out.stdout and "heta_fast[integrations]" in out.stdout
