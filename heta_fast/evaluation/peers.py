"""Peer attribution methods run with their authors' own code, for side-by-side evaluation.

- **ContextCite** (Cohen-Wang et al. 2024; PyPI ``context-cite`` 0.0.4): random ablations of the context's
  sources and a LASSO surrogate, through the package's own ``get_masks_and_logit_probs``,
  ``aggregate_logit_probs`` and ``LassoRegression``. What this module supplies is only what the package
  would otherwise build with its chat template and generation: the prompt is the harness's prompt as is,
  the response is the target token, and the sources are the harness's units (tokens by default, sentences
  or any token ranges for long documents) — an ablated source's tokens are left out of the prompt, as
  ContextCite's partitioner leaves out its text. Its sentence splitter (nltk) needs a download and is never
  used.
- **ReAGent** (Zhao & Shan 2024; Inseq 0.7.1's built-in ``reagent``): Inseq's own implementation with its
  defaults, the authors' "postag" replacement: a token is replaced by a random vocabulary entry of the same part of
  speech. Inseq tags the vocabulary with NLTK's averaged-perceptron tagger, whose data is a separate download that
  no package on the index ships; offline, give the part-of-speech classes as a file instead (``pos_tags=``, built
  with another Penn-Treebank tagger by ``benchmarks/eval/data/reagent/pos_tags.py``). Only the classes change;
  everything else is Inseq's code.

Both explain the harness's quantity: the target token after the context. Scores are per context token,
made non-negative like the other baselines (ContextCite's LASSO weights clamped at 0: a source whose
removal raises the target's probability is no support for it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import HetaInputError

PEERS = {
    "contextcite": "ContextCite (context-cite 0.0.4, its own ablations and LASSO), 64 ablations, token sources",
    "reagent": "ReAGent (Inseq 0.7.1's built-in 'reagent', its own defaults)",
}


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise HetaInputError(f"{what} needs the package {module!r} (requirements/evaluation.txt): {e}") from None


def contextcite_scores(model, ids: Sequence[int], target_id: int, *, tokenizer,
                       units: Sequence[tuple[int, int]] | None = None, keep: Sequence[int] = (),
                       num_ablations: int = 64, keep_prob: float = 0.5, seed: int = 0) -> Tensor:
    """ContextCite's attribution of ``target_id`` after ``ids``, per context token.

    Args:
        model: a HuggingFace causal LM.
        ids: the prompt's token ids (a BOS included where the tokenizer adds one).
        target_id: the token explained (ContextCite's "response", one token long).
        units: ContextCite's sources as ``[start, end)`` token ranges of ``ids`` (default: every token not in
            ``keep`` is a source of its own). Each source's score is spread evenly over its tokens.
        keep: positions that are never ablated (a BOS: not a context token).
        num_ablations, keep_prob: ContextCite's ``num_ablations`` and ``ablation_keep_prob``.
        seed: ContextCite's ``base_seed`` for its ablation masks.
        tokenizer: passed to ContextCite's data collator (padding); any HuggingFace tokenizer of the model.

    Returns:
        ``[len(ids)]`` float64 scores (zero at ``keep``).
    """
    utils = _need("context_cite.utils", "ContextCite")
    solver = _need("context_cite.solver", "ContextCite")
    ids = [int(i) for i in ids]
    keep = set(keep)
    if units is None:
        units = [(i, i + 1) for i in range(len(ids)) if i not in keep]
    if not units:
        raise HetaInputError("ContextCite needs at least one source")
    unit_of = {}
    for u, (s, e) in enumerate(units):
        for i in range(s, e):
            unit_of[i] = u

    def prompt_ids(mask=None):
        if mask is None:
            return list(ids)
        return [tok for i, tok in enumerate(ids) if i not in unit_of or mask[unit_of[i]]]

    with torch.no_grad():
        masks, logit_probs = utils.get_masks_and_logit_probs(
            model, tokenizer, num_ablations, len(units), prompt_ids, [int(target_id)], keep_prob, 1,
            base_seed=seed)
    outputs = utils.aggregate_logit_probs(logit_probs)
    weight, _ = solver.LassoRegression().fit(masks, outputs, 1)
    scores = torch.zeros(len(ids), dtype=torch.float64)
    for u, (s, e) in enumerate(units):
        scores[s:e] = max(float(weight[u]), 0.0) / (e - s)
    return scores


def vocabulary_words(tokenizer) -> list[str]:
    """Every vocabulary entry decoded alone, as Inseq's ReAGent tags them (ids 0 … ``vocab_size`` − 1)."""
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


def vocabulary_fingerprint(tokenizer) -> str:
    """sha256 of :func:`vocabulary_words`, one entry per line: which tokenizer a part-of-speech file is for."""
    text = "\n".join(vocabulary_words(tokenizer))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def read_pos_tags(path: str | Path) -> dict:
    """A part-of-speech file's record (``benchmarks/eval/data/reagent/pos_tags.py``), not yet checked against a
    tokenizer: ``tagger`` (what made the classes), ``pos2ids`` (``{tag: [token ids]}``) and the vocabulary's
    ``vocab_size`` and ``vocab_sha256``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HetaInputError(f"part-of-speech file {path}: {e}") from None


def load_pos_tags(path: str | Path, tokenizer) -> dict:
    """:func:`read_pos_tags`, checked against ``tokenizer``: its vocabulary, every id in exactly one class."""
    return check_pos_tags(read_pos_tags(path), tokenizer, path)


def check_pos_tags(rec: dict, tokenizer, path: str | Path) -> dict:
    """``rec`` (from the file ``path``) if its classes are for ``tokenizer``'s vocabulary and cover it once."""
    if rec.get("vocab_size") != tokenizer.vocab_size or rec.get("vocab_sha256") != vocabulary_fingerprint(tokenizer):
        raise HetaInputError(f"part-of-speech file {path} was made for another tokenizer (model {rec.get('model')!r}, "
                             f"{rec.get('vocab_size')} entries; this one has {tokenizer.vocab_size})")
    ids = sorted(i for v in rec["pos2ids"].values() for i in v)
    if ids != list(range(tokenizer.vocab_size)):
        raise HetaInputError(f"part-of-speech file {path} does not put every vocabulary entry in exactly one class")
    return rec


@contextlib.contextmanager
def _pos_classes(pos2ids: dict[str, list[int]] | None):
    """While building Inseq's ReAGent: its POS sampler takes ``pos2ids`` instead of tagging the vocabulary with
    NLTK (Inseq 0.7.1's ``POSTagTokenSampler.build_pos_mapping_from_vocab``, pinned in requirements)."""
    if pos2ids is None:
        yield
        return
    from inseq.attr.feat.ops.reagent_core.token_sampler import POSTagTokenSampler

    before = POSTagTokenSampler.__dict__["build_pos_mapping_from_vocab"]
    POSTagTokenSampler.build_pos_mapping_from_vocab = staticmethod(lambda *a, **kw: dict(pos2ids))
    try:
        yield
    finally:
        POSTagTokenSampler.build_pos_mapping_from_vocab = before


def reagent_scores(model, tokenizer, prompt: str, ids: Sequence[int], target_id: int, *, seed: int = 0,
                   pos_tags: dict | None = None) -> Tensor:
    """ReAGent's attribution of ``target_id`` after ``prompt`` (whose tokens are ``ids``), per context token.

    Inseq takes text: the prompt, and the prompt followed by the decoded target token. Its tokenisation must
    give back ``ids`` and the target; otherwise this raises rather than explain another token.
    ``pos_tags``: a record of :func:`load_pos_tags` (the sampler's part-of-speech classes); None = Inseq tags the
    vocabulary with NLTK, which needs its tagger data.
    """
    inseq = _need("inseq", "ReAGent")
    if pos_tags is None:
        nltk = _need("nltk", "ReAGent")
        try:  # Inseq's ReAGent draws POS-matched replacement tokens with NLTK's tagger, a separate download
            nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
        except LookupError:
            raise HetaInputError(
                "ReAGent (Inseq) needs NLTK's 'averaged_perceptron_tagger_eng' data, which no package on the index "
                "ships; on a machine with network: python -m nltk.downloader averaged_perceptron_tagger_eng; "
                "offline, give part-of-speech classes from another tagger (--reagent-pos-tags FILE, built by "
                "benchmarks/eval/data/reagent/pos_tags.py)"
            ) from None
    torch.manual_seed(seed)
    np.random.seed(seed)
    with _pos_classes(None if pos_tags is None else pos_tags["pos2ids"]):
        attr_model = inseq.load_model(model, "reagent", tokenizer=tokenizer)
    generated = prompt + tokenizer.decode([int(target_id)])
    out = attr_model.attribute(prompt, generated, show_progress=False, attribute_target=True)
    seq = out.sequence_attributions[0]
    target_ids = [t.id for t in seq.target]
    ids = [int(i) for i in ids]
    if target_ids[: len(ids)] != ids or target_ids[len(ids):] != [int(target_id)]:
        raise HetaInputError("Inseq tokenised the prompt and target differently from the harness: "
                             f"{target_ids} vs {ids} + [{target_id}]")
    attributions = seq.target_attributions  # [len(prefix + generated), generated steps]
    col = attributions[: len(ids), 0].double()
    if col.dim() == 2:  # Inseq repeats ReAGent's one score per token along the embedding axis
        col = col.mean(-1)
    return torch.nan_to_num(col, nan=0.0).abs()


def peer_scores(name: str, attributor, ids: Sequence[int], offsets, prompt: str, target_id: int, *,
                seed: int = 0, pos_tags: dict | None = None) -> Tensor:
    """Scores of peer ``name`` (one of :data:`PEERS`) for the harness's encoded prompt, per prompt token.

    A BOS the tokenizer added is never a ContextCite source (it is the model's sink, not context).
    ``pos_tags``: ReAGent's part-of-speech classes (:func:`load_pos_tags`); None = NLTK's tagger.
    """
    from ..sinks import leading_special_count

    model, tok = attributor.adapter.model, attributor.tokenizer
    if name == "contextcite":
        lead = leading_special_count(list(ids), offsets, tok)
        return contextcite_scores(model, ids, target_id, keep=range(lead), seed=seed, tokenizer=tok)
    if name == "reagent":
        return reagent_scores(attributor.adapter.source, tok, prompt, ids, target_id, seed=seed, pos_tags=pos_tags)
    raise HetaInputError(f"unknown peer method {name!r}; choose one of {', '.join(PEERS)}")
