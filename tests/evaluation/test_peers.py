"""Peer methods through their own code: ContextCite (context-cite 0.0.4) on inputs with a known answer, and
ReAGent's clear error where its tagger data is missing."""

import pytest
import torch
from torch import nn

from heta_fast import HetaInputError
from heta_fast.evaluation import peers
from heta_fast.testing import hf_char_tokenizer

TARGET = 5
NEEDLE = 40  # the one token whose presence raises the target's logit


class _Out:
    def __init__(self, logits):
        self.logits = logits


class NeedleModel(nn.Module):
    """log-odds of TARGET after the prompt = 3 · (number of NEEDLE tokens in it) − 2, whatever else is there."""

    device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        n = (input_ids == NEEDLE).float().sum(-1, keepdim=True)  # [B, 1]
        logits = torch.zeros(*input_ids.shape, 97)
        logits[..., TARGET] = 3.0 * n - 2.0
        return _Out(logits)


def test_contextcite_finds_the_token_the_prediction_depends_on():
    ids = [0, 10, 11, NEEDLE, 12, 13, 14, 15, 16]  # a BOS, then context
    scores = peers.contextcite_scores(NeedleModel(), ids, TARGET, keep=[0], tokenizer=hf_char_tokenizer(), seed=3)
    assert scores.shape == (len(ids),) and scores.dtype == torch.float64
    assert scores[0] == 0  # the BOS is never a source
    assert int(scores.argmax()) == 3
    # The surrogate is linear in the kept sources; the needle's weight is its effect on the logit-probability,
    # the others' effects are nothing (LASSO shrinks them to zero).
    assert scores[3] > 1.0 and float(scores[[1, 2, 4, 5, 6, 7, 8]].max()) < 0.1 * float(scores[3])
    # Seeded: the same ablations, the same scores.
    again = peers.contextcite_scores(NeedleModel(), ids, TARGET, keep=[0], tokenizer=hf_char_tokenizer(), seed=3)
    torch.testing.assert_close(scores, again)


def test_contextcite_units_are_ablated_together_and_share_their_score():
    ids = [0, 10, 11, NEEDLE, 12, 13, 14]
    seen = []

    class Spy(NeedleModel):
        def forward(self, input_ids, **kw):
            seen.append(input_ids[0].tolist())
            return super().forward(input_ids, **kw)

    units = [(1, 3), (3, 5), (5, 7)]
    scores = peers.contextcite_scores(Spy(), ids, TARGET, units=units, keep=[0], tokenizer=hf_char_tokenizer())
    # Every ablated prompt keeps the BOS, then whole units in order, the response token appended for the loss.
    for prompt in seen:
        body = prompt[1:-1]
        assert prompt[0] == 0 and prompt[-1] == TARGET
        kept = [u for u in ([10, 11], [NEEDLE, 12], [13, 14]) if all(t in body for t in u)]
        assert body == [t for u in kept for t in u]
    assert scores[3] == scores[4] > 0 and scores[1] == scores[2] and scores[5] == scores[6]


def test_reagent_without_its_tagger_data_names_what_is_missing(monkeypatch):
    import nltk

    def missing(_name):
        raise LookupError("not here")

    monkeypatch.setattr(nltk.data, "find", missing)
    with pytest.raises(HetaInputError, match="averaged_perceptron_tagger_eng"):
        peers.reagent_scores(None, None, "abc", [1, 2, 3], 4)


def _pos_file(tmp_path, tok, pos2ids, **over):
    import json

    rec = {"model": "tiny", "tagger": "a test tagger", "vocab_size": tok.vocab_size,
           "vocab_sha256": peers.vocabulary_fingerprint(tok), "pos2ids": pos2ids, **over}
    path = tmp_path / "pos.json"
    path.write_text(json.dumps(rec))
    return path


def test_pos_tag_files_must_be_for_this_tokenizer_and_cover_its_vocabulary(tmp_path):
    tok = hf_char_tokenizer()
    every = list(range(tok.vocab_size))
    rec = peers.load_pos_tags(_pos_file(tmp_path, tok, {"NN": every[::2], "VB": every[1::2]}), tok)
    assert rec["tagger"] == "a test tagger"
    with pytest.raises(HetaInputError, match="another tokenizer"):
        peers.load_pos_tags(_pos_file(tmp_path, tok, {"NN": every}, vocab_sha256="0" * 64), tok)
    with pytest.raises(HetaInputError, match="exactly one class"):
        peers.load_pos_tags(_pos_file(tmp_path, tok, {"NN": every, "VB": [3]}), tok)
    with pytest.raises(HetaInputError, match="exactly one class"):
        peers.load_pos_tags(_pos_file(tmp_path, tok, {"NN": every[1:]}), tok)


def test_reagent_with_given_pos_classes_runs_inseqs_code_without_nltk(tmp_path, monkeypatch):
    import nltk
    from inseq.attr.feat.ops.reagent_core.token_sampler import POSTagTokenSampler

    from heta_fast.testing import tiny_model

    def no_nltk(*_a, **_k):
        raise AssertionError("NLTK was asked")

    monkeypatch.setattr(nltk.data, "find", no_nltk)
    monkeypatch.setattr(nltk, "pos_tag", no_nltk)
    monkeypatch.setattr(nltk, "download", no_nltk)
    tok = hf_char_tokenizer()
    every = list(range(tok.vocab_size))
    classes = {"NN": every[::2], "VB": every[1::2]}
    rec = peers.load_pos_tags(_pos_file(tmp_path, tok, classes), tok)
    built = []
    real_init = POSTagTokenSampler.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        built.append(dict(self.pos2ids))

    monkeypatch.setattr(POSTagTokenSampler, "__init__", spy)
    before = POSTagTokenSampler.__dict__["build_pos_mapping_from_vocab"]
    model = tiny_model("llama").eval()
    prompt = "abcdefgh"
    ids = tok(prompt)["input_ids"]
    scores = peers.reagent_scores(model, tok, prompt, ids, 7, seed=0, pos_tags=rec)
    assert built == [classes]  # Inseq's sampler holds the given classes
    assert POSTagTokenSampler.__dict__["build_pos_mapping_from_vocab"] is before  # and Inseq is as it was
    assert scores.shape == (len(ids),) and torch.isfinite(scores).all() and (scores >= 0).all()
    assert scores.sum() > 0
