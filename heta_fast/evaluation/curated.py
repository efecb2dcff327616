"""Curated-set runner: every method on every example, metrics per example, resumable, then a report.

Per example: prompt = ``text + cue`` (cue ``"\\nAnswer:"`` unless the example gives one), context = the
prompt tokens, and up to two targets (:data:`TARGETS`): ``"gold"``, the first token of ``" " + answer``
teacher-forced after the prompt (SPEC §5), and ``"greedy"``, the model's own answer (the first token it
generates after the cue, the argmax). Each method gives one non-negative score per context token; every
metric of :mod:`.metrics` is computed on it. One JSON line per (example, target) and per rerun that adds
methods goes to ``results.jsonl``; a rerun skips (example, target, method) triples already there with the
same settings. The report has three slices (:data:`SLICES`): every example's gold token, the examples whose
gold token is the model's top-1, and the model's own answer.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..combine import combine
from ..errors import HetaInputError
from ..options import SPECS_BY_NAME, options_from_preset
from ..sinks import default_sink_id, resolve_sink
from . import metrics as mt
from .baselines import BASELINES, baseline_scores, perturbed_embeddings
from .data import Example
from .peers import PEERS, check_pos_tags, peer_scores, read_pos_tags

# HETA variants. Each is (run, recipe): the run says which attribute() call provides the components
# (runs are shared, so all ablations cost one run), the recipe how to combine them.
HETA_METHODS = {
    # What a user gets: attribute() with one of the library's presets (run "preset:<name>"), untouched by the
    # runner's --hessian, --rank and --num-probes (which the ablations below use to stay cheap). Their records
    # keep the preset's options, so a preset that changes is recomputed, never mixed with old rows.
    "heta_default": ("preset:default", dict(comps="MSI", library_scores=True),
                     "the library's default preset exactly as shipped (low-rank S, rank 16, m=10, last 6 layers, "
                     "sink, normalize='sum'; README, Default preset)"),
    "heta_exact": ("preset:exact", dict(comps="MSI", library_scores=True),
                   "the library's 'exact' preset (the default with exact S, m=10; the default until 2026-12-01)"),
    "heta_exact_M": ("preset:exact", dict(comps="M"), "ablation of the exact preset: M only (last 6 layers, sink)"),
    "heta_exact_S": ("preset:exact", dict(comps="S"), "ablation of the exact preset: S only (exact, last 6 layers)"),
    "heta_exact_I": ("preset:exact", dict(comps="I"), "ablation of the exact preset: I only (zero mask, sink)"),
    "heta_paper": ("preset:paper", dict(comps="MSI", library_scores=True),
                   "the library's 'paper' preset: the paper's formula (raw S and I, exact S over every layer, "
                   "no sink)"),
    "heta_fast": ("preset:fast", dict(comps="MSI", library_scores=True),
                  "the library's 'fast' preset exactly as shipped (the default with m=4)"),
    "heta": ("base", dict(comps="MSI", normalize="none"), "paper formula M(βS+γI), normalize='none', mask zero"),
    "heta_sum": ("base", dict(comps="MSI", normalize="sum"), "normalize='sum' (S, I divided by their sums)"),
    "heta_M": ("base", dict(comps="M"), "ablation: M only"),
    "heta_S": ("base", dict(comps="S"), "ablation: S only"),
    "heta_I": ("base", dict(comps="I"), "ablation: I only"),
    "heta_MS": ("base", dict(comps="MS"), "ablation: M·S"),
    "heta_MI": ("base", dict(comps="MI"), "ablation: M·I"),
    "heta_mask_mean": ("mean", dict(comps="MSI", normalize="none"), "paper formula, mask='mean' for I"),
    "heta_sink": ("sink", dict(comps="MSI", normalize="none"), "paper formula, sink token prepended and dropped"),
    "heta_sink_sum": ("sink", dict(comps="MSI", normalize="sum"), "normalize='sum', sink token (the default preset "
                      "until 2026-11-28, when curvature was over all layers)"),
    "heta_sink_M": ("sink", dict(comps="M"), "ablation: M only, sink token"),
}
METHODS = {**BASELINES, **PEERS, **{k: v[2] for k, v in HETA_METHODS.items()}}
# Methods whose scores change with the seed (stability across seeds is measured only for these).
SEEDED = {m for m, (_, r, _) in HETA_METHODS.items() if "S" in r["comps"]} | {"random", *PEERS}

# What is explained: the gold answer's first token, or the model's own greedy answer after the cue.
TARGETS = ("gold", "greedy")
# Report slices: (name, target kind, only examples whose gold token is the model's top-1?, description).
SLICES = (
    ("all", "gold", False, "gold answer's first token, every example"),
    ("gold_top1", "gold", True, "gold answer's first token, examples where it is the model's top-1"),
    ("greedy", "greedy", False, "the model's own answer (greedy first token after the cue), every example"),
)


@dataclass
class RunSettings:
    """Everything that changes the numbers; stored with each record so a rerun never mixes settings."""

    model: str = "default"
    hessian: str = "lowrank"
    rank: int = 16
    num_probes: int = 4
    seed: int = 0
    beta: float = 0.5
    gamma: float = 0.5
    sink_token_id: int | None = None  # None = default_sink_id(tokenizer)
    soft_samples: int = 2
    ig_steps: int = 16
    noise_sigma: float = 0.01  # relative to the RMS of X
    stability_examples: int = 0  # stability (noise and seed) on the first N examples only
    # ReAGent's part-of-speech classes from a file (peers.read_pos_tags) instead of NLTK's tagger; kept per method
    # record as "pos_tagger", not in the key, so adding ReAGent to a finished run reuses its other methods.
    reagent_pos_tags: str | None = None
    extra: dict = field(default_factory=dict)

    def heta_options(self, seed: int | None = None) -> dict:
        # Components only (the recipes combine them); no sink unless a run asks for one.
        return dict(hessian=self.hessian, rank=self.rank, num_probes=self.num_probes,
                    seed=self.seed if seed is None else seed, beta=self.beta, gamma=self.gamma, sink_token=None)

    def sink_id(self, tokenizer) -> int:
        """The sink token of the ``heta_sink*`` runs: ``sink_token_id``, else the tokenizer's default."""
        return self.sink_token_id if self.sink_token_id is not None else default_sink_id(tokenizer)

    def key(self) -> dict:
        d = asdict(self)
        d.pop("stability_examples")  # more stability examples do not change the other numbers
        d.pop("reagent_pos_tags")  # ReAGent's records say which tagger made them (pos_tagger)
        return d

    def pos_tagger(self) -> str:
        """What made ReAGent's part-of-speech classes: the file's tagger, or NLTK's (Inseq's own)."""
        return NLTK_TAGGER if self.reagent_pos_tags is None else _pos_tags_file(self.reagent_pos_tags)["tagger"]


NLTK_TAGGER = "NLTK averaged_perceptron_tagger_eng (Inseq's own)"


# Read once per run (the file is ~0.3 MB; the check decodes the whole vocabulary), not once per example.
_pos_tags_file = functools.lru_cache(maxsize=4)(read_pos_tags)


@functools.lru_cache(maxsize=4)
def _checked_pos_tags(path: str, tokenizer) -> dict:
    return check_pos_tags(_pos_tags_file(path), tokenizer, path)


def parse_methods(spec) -> list[str]:
    """``"all"``, a list, or comma-separated names; unknown names are an error listing the choices."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(METHODS)
    names = spec.split(",") if isinstance(spec, str) else [n for s in spec for n in s.split(",")]
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise HetaInputError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


@dataclass
class Encoded:
    ids: list[int]  # context (prompt) ids
    offsets: list[tuple[int, int]]
    text: str  # the prompt
    target_id: int
    kind: str = "gold"  # which target (TARGETS)


def encode(tokenizer, ex: Example) -> Encoded:
    """Prompt tokens with offsets, and the first token of the gold answer (with its leading space)."""
    prompt = ex.prompt()
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ans = tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"]
    if not ans:
        raise HetaInputError(f"example {ex.id}: the answer tokenises to nothing")
    return Encoded(ids=list(enc["input_ids"]), offsets=[tuple(o) for o in enc["offset_mapping"]], text=prompt,
                   target_id=int(ans[0]))


def prediction_facts(logprob_fn, X: Tensor, gold_id: int, tokenizer=None) -> dict:
    """What the model predicts after the prompt: its greedy token, the gold token's probability and rank.

    ``X`` is the prompt's embedding rows ``[t, d]``; ties in the argmax go to the lowest token id.
    """
    lp = logprob_fn(X[None])[0]
    greedy = int(torch.argmax(lp))
    facts = {"greedy_id": greedy, "p_greedy": float(lp[greedy].exp()), "p_gold": float(lp[gold_id].exp()),
             "gold_rank": int((lp > lp[gold_id]).sum()) + 1, "gold_is_top1": greedy == gold_id}
    if tokenizer is not None:
        facts["gold_token"], facts["greedy_token"] = tokenizer.decode([gold_id]), tokenizer.decode([greedy])
    return facts


def with_target(enc: Encoded, kind: str, facts: dict) -> Encoded:
    """``enc`` explaining the target ``kind`` (one of :data:`TARGETS`), given :func:`prediction_facts`."""
    if kind == "gold":
        return enc
    if kind == "greedy":
        return Encoded(enc.ids, enc.offsets, enc.text, facts["greedy_id"], kind="greedy")
    raise HetaInputError(f"unknown target {kind!r}; choose from {', '.join(TARGETS)}")


def prompt_aligned(values, n_prompt: int) -> Tensor:
    """A result's per-position values over all ``n_prompt`` prompt tokens, in float64: a BOS the tokenizer added
    is the library's sink (special_tokens="sink"), not a position, so its values start after it; a zero in front
    keeps them aligned with the prompt's ids, as every baseline's are."""
    v = torch.tensor(values, dtype=torch.float64)
    return torch.cat([v.new_zeros(n_prompt - len(v)), v])


def _preset_of(run: str | None) -> str | None:
    """The library preset a run of :data:`HETA_METHODS` calls (``"preset:<name>"``), or None for the runner's own."""
    return run.removeprefix("preset:") if run is not None and run.startswith("preset:") else None


def _heta_runs(attributor, enc: Encoded, runs: set[str], settings: RunSettings, seed=None):
    """The attribute() calls the requested HETA variants need: components per run, seconds per run.

    ``"base"``: M, S, I (mask zero); ``"mean"``: the base M and S with I recomputed with ``mask="mean"``;
    ``"sink"``: all three with a sink token prepended and dropped (option ``sink_token``); ``"preset:<name>"``:
    the library's preset of that name with only the seed set (its own score is kept as ``"scores"``).
    """
    full = enc.ids + [enc.target_id]  # the target is its last token (attribute()'s default)
    opts = settings.heta_options(seed)
    out: dict[str, dict] = {}
    secs: dict[str, float] = {}

    def aligned(values):
        return prompt_aligned(values, len(enc.ids))

    def comps(r):
        return {k: aligned(getattr(r, k)) for k in "MSI" if getattr(r, k) is not None}

    if runs & {"base", "mean"}:
        t0 = time.perf_counter()
        out["base"] = comps(attributor.attribute(full, **opts))
        secs["base"] = time.perf_counter() - t0
    if "mean" in runs:
        t0 = time.perf_counter()
        r = attributor.attribute(full, components=("I",), mask="mean", **opts)
        out["mean"] = {**out["base"], "I": aligned(r.I)}
        secs["mean"] = secs["base"] + time.perf_counter() - t0  # a standalone run would need M and S too
    if "sink" in runs:
        t0 = time.perf_counter()
        sink = settings.sink_id(attributor.tokenizer)
        r = attributor.attribute(full, **{**opts, "sink_token": sink})
        out["sink"] = comps(r) | {"sink_gate_mass": r.sink_gate_mass}
        secs["sink"] = time.perf_counter() - t0
    for run in sorted(r for r in runs if _preset_of(r)):
        t0 = time.perf_counter()
        r = attributor.attribute(full, preset=_preset_of(run), seed=opts["seed"])
        out[run] = comps(r) | {"scores": aligned(r.scores)}
        secs[run] = time.perf_counter() - t0
    return out, secs


def preset_key(method: str) -> dict | None:
    """The options of the library preset behind a ``heta_*`` method (None for the runner's own recipes): stored
    with the method's record, so rows of a preset whose options have changed since are recomputed."""
    preset = _preset_of(HETA_METHODS.get(method, (None,))[0])
    if preset is None:
        return None
    opts = options_from_preset(preset).to_dict()
    return {k: v for k, v in opts.items() if SPECS_BY_NAME[k].affects_result}


def same_preset(stored: dict | None, current: dict | None) -> bool:
    """Whether a record's stored preset options are the preset's options now. An option added to the library
    since the record was written counts as unchanged at its default (a new option's default changes nothing:
    ``coarse="none"``), so adding an option does not throw away every stored row."""
    if stored is None or current is None:
        return stored == current
    added = {k: v for k, v in current.items() if k not in stored}
    return all(stored[k] == current.get(k, stored[k]) for k in stored) and all(
        v == SPECS_BY_NAME[k].default for k, v in added.items())


def _combine(c: dict, recipe: dict, settings: RunSettings) -> Tensor:
    if recipe.get("library_scores"):
        return c["scores"]
    pick = {k: (c[k] if k in recipe["comps"] else None) for k in "MSI"}
    return combine(pick["M"], pick["S"], pick["I"], settings.beta, settings.gamma,
                             recipe.get("normalize", "none"))


def method_scores(attributor, enc: Encoded, methods: list[str], settings: RunSettings, *,
                  seed: int | None = None) -> tuple[dict[str, Tensor], dict[str, float], dict]:
    """Scores of every method for one encoded example; also seconds per method and extra facts."""
    adapter = attributor.adapter
    ids = torch.tensor(enc.ids, dtype=torch.long, device=adapter.device)
    scores: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    for m in methods:
        if m in BASELINES:
            t0 = time.perf_counter()
            scores[m] = baseline_scores(m, adapter, ids, enc.target_id, seed=settings.seed if seed is None else seed,
                                        ig_steps=settings.ig_steps).double().cpu()
            seconds[m] = time.perf_counter() - t0
        elif m in PEERS:
            t0 = time.perf_counter()
            pos_tags = None if settings.reagent_pos_tags is None else _checked_pos_tags(settings.reagent_pos_tags,
                                                                                       attributor.tokenizer)
            scores[m] = peer_scores(m, attributor, enc.ids, enc.offsets, enc.text, enc.target_id,
                                    seed=settings.seed if seed is None else seed, pos_tags=pos_tags)
            seconds[m] = time.perf_counter() - t0
    runs_needed = {HETA_METHODS[m][0] for m in methods if m in HETA_METHODS}
    extra = {}
    if runs_needed:
        comps, secs = _heta_runs(attributor, enc, runs_needed, settings, seed)
        if "sink" in comps:
            extra["sink_gate_mass"] = comps["sink"].pop("sink_gate_mass")
        for m in methods:
            if m in HETA_METHODS:
                run, recipe, _ = HETA_METHODS[m]
                scores[m] = _combine(comps[run], recipe, settings)
                seconds[m] = secs[run]  # the shared run's cost (ablations are free once it is done)
    return scores, seconds, extra


def example_metrics(logprob_fn, X: Tensor, enc: Encoded, ex: Example, a: Tensor, settings: RunSettings) -> dict:
    """All per-example metrics of one attribution ``a`` over the context."""
    offs = [(s, e) for s, e in enc.offsets]
    out = {
        **mt.soft_erasure(logprob_fn, X, a, seed=settings.seed, samples=settings.soft_samples),
        **mt.aopc(logprob_fn, X, enc.target_id, a),
        "first_token_share": float(a[0] / a.sum()) if a.sum() > 0 else 0.0,
    }
    if ex.labelled:
        support = mt.token_span_mask(offs, enc.text, ex.support)
        distractor = mt.token_span_mask(offs, enc.text, ex.distractor)
        question = mt.token_span_mask(offs, enc.text, [(ex.passage_end, len(enc.text))])
        out.update(dsa=mt.dsa(a, support, distractor), support_share=mt.mass_share(a, support),
                   distractor_share=mt.mass_share(a, distractor),
                   question_share=mt.mass_share(a, question & ~support & ~distractor))
    else:  # no segments: the segment metrics do not exist (None is left out of every mean)
        out.update(dsa=None, support_share=None, distractor_share=None, question_share=None)
    gold = mt.token_span_mask(offs, enc.text, ex.gold) if ex.gold else None
    out["f1"] = mt.f1_alignment(a, gold) if gold is not None and gold.any() else float("nan")
    return out


def stability(attributor, enc: Encoded, methods: list[str], scores: dict[str, Tensor], settings: RunSettings) -> dict:
    """Spearman ρ of each method's scores with (a) Gaussian noise on X, (b) another seed (seeded methods)."""
    adapter = attributor.adapter
    full = torch.tensor(enc.ids + [enc.target_id], dtype=torch.long, device=adapter.device)
    noise = mt.embedding_noise(adapter.embed(full), relative_sigma=settings.noise_sigma, seed=settings.seed + 1)
    out = {m: {} for m in methods}
    # Runs that prepend a sink token see [sink] + ids: the same noise on the real tokens, none on the sink row.
    # The library presets' sink is their own sink_token ("auto" in every preset but paper's); the heta_sink* runs
    # use the runner's --sink-token-id if given.
    def run_sink(run: str | None) -> int | None:
        if run == "sink":
            return settings.sink_id(attributor.tokenizer)
        preset = _preset_of(run)
        if preset:
            choice = options_from_preset(preset).sink_token
            return resolve_sink(choice, attributor.tokenizer, adapter.vocab_size, int(full[0]))
        return None

    groups: dict[int | None, list[str]] = {}
    for m in (m for m in methods if m not in PEERS):
        groups.setdefault(run_sink(HETA_METHODS[m][0] if m in HETA_METHODS else None), []).append(m)
    noisy = {}
    for sink, group in groups.items():
        seq, seq_noise = full, noise
        if sink is not None:
            seq = torch.cat([full.new_tensor([sink]), full])
            seq_noise = torch.cat([torch.zeros_like(noise[:1]), noise])
        with perturbed_embeddings(adapter, seq, seq_noise):
            noisy.update(method_scores(attributor, enc, group, settings)[0])
    for m in methods:
        # Peers run their own code on token ids: noise on the embedding rows never reaches them.
        out[m]["stability_noise"] = float("nan") if m in PEERS else mt.spearman(scores[m], noisy[m])
    seeded = [m for m in methods if m in SEEDED]
    if seeded:
        other, _, _ = method_scores(attributor, enc, seeded, settings, seed=settings.seed + 1)
        for m in seeded:
            out[m]["stability_seed"] = mt.spearman(scores[m], other[m])
    return out


# ------------------------------------------------------------------------------------------------ runner
def _load_done(path: Path, key: dict, pos_tagger: str = NLTK_TAGGER) -> dict[tuple[str, str], dict]:
    """Finished ((example id, target) -> method -> record) with matching settings; other lines are left alone.

    Lines written before targets existed carry no ``"target"``: they explain the gold token.
    """
    done: dict[tuple[str, str], dict] = {}
    if not path.exists():
        return done
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise HetaInputError(f"{path}:{lineno}: corrupt results line; delete it to recompute") from None
        if rec.get("settings") != key:
            continue
        entry = done.setdefault((rec["id"], rec.get("target", "gold")), {})
        for m, val in rec["methods"].items():
            if not same_preset(val.get("preset_options"), preset_key(m)):
                continue  # a library preset whose options have changed since (or a row from before they were kept)
            if m == "reagent" and val.get("pos_tagger", NLTK_TAGGER) != pos_tagger:
                continue  # ReAGent with part-of-speech classes from another tagger
            if "stability_noise" in val or m not in entry:
                entry[m] = val
    return done


def load_records(examples: list[Example], out_dir: str | Path, settings: RunSettings, targets=TARGETS) -> list[dict]:
    """The finished records of ``examples`` in ``out_dir/results.jsonl`` (same settings), without computing
    anything: what :func:`run_curated` returns, for the (example, target) pairs already there."""
    path = Path(out_dir) / "results.jsonl"
    done = _load_done(path, settings.key(), settings.pos_tagger())
    facts: dict[str, dict] = {}
    keys = ("greedy_id", "p_greedy", "p_gold", "gold_rank", "gold_is_top1", "gold_token", "greedy_token")
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("settings") == settings.key() and "gold_is_top1" in rec:
                facts[rec["id"]] = {k: rec[k] for k in keys if k in rec}
    return [{"id": ex.id, "target": kind, **facts.get(ex.id, {}), "methods": done[(ex.id, kind)]}
            for ex in examples for kind in _check_targets(targets) if (ex.id, kind) in done]


def _check_targets(targets) -> tuple[str, ...]:
    targets = tuple(dict.fromkeys(targets))
    bad = [k for k in targets if k not in TARGETS]
    if not targets or bad:
        raise HetaInputError(f"targets {list(targets)!r}: choose one or more of {', '.join(TARGETS)}")
    return targets


def run_curated(examples: list[Example], out_dir: str | Path, methods: list[str], settings: RunSettings, *,
                targets=("gold",), attributor=None, progress: bool = True) -> list[dict]:
    """Evaluate ``methods`` on ``examples`` for each target kind in ``targets`` (:data:`TARGETS`); append
    per-(example, target) records to ``out_dir/results.jsonl``.

    Where the model's greedy token is the gold token, the ``"greedy"`` record copies the gold record's
    methods (the same target: every method would give the same scores) instead of recomputing them.
    Returns the merged records (finished earlier and now) of these examples, in order: ``id``, ``target``,
    the prediction facts (:func:`prediction_facts`) and ``methods``.
    """
    from tqdm.auto import tqdm

    targets = _check_targets(targets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    key = settings.key()
    done = _load_done(path, key, settings.pos_tagger())
    if attributor is None:
        from ..api import Attributor

        attributor = Attributor.from_pretrained(settings.model)
    logprob_fn = mt.model_logprob_fn(attributor.adapter)
    bar = tqdm(examples, desc="curated", disable=not progress)
    results = []
    for i, ex in enumerate(bar):
        want_stab = i < settings.stability_examples
        gold_enc = encode(attributor.tokenizer, ex)
        X = attributor.adapter.embed(torch.tensor(gold_enc.ids, device=attributor.adapter.device)).detach()
        facts = prediction_facts(logprob_fn, X, gold_enc.target_id, attributor.tokenizer)
        for kind in targets:
            enc = with_target(gold_enc, kind, facts)
            have = done.get((ex.id, kind), {})
            todo = [m for m in methods if m not in have or (want_stab and "stability_noise" not in have[m])]
            if todo:
                bar.set_postfix_str(f"{ex.id} {kind}")
                same = done.get((ex.id, "gold"), {}) if kind == "greedy" and facts["gold_is_top1"] else {}
                if all(m in same and (not want_stab or "stability_noise" in same[m]) for m in todo):
                    new = {m: same[m] for m in todo}  # the greedy token is the gold token: same computation
                else:
                    new = _evaluate(attributor, logprob_fn, X, enc, ex, todo, have, settings, want_stab)
                rec = {"id": ex.id, "target": kind, "settings": key, "n_tokens": len(enc.ids),
                       "target_id": enc.target_id, "target_token": attributor.tokenizer.decode([enc.target_id]),
                       **facts, "methods": new}
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                done.setdefault((ex.id, kind), {}).update(new)
            results.append({"id": ex.id, "target": kind, **facts, "methods": done[(ex.id, kind)]})
    bar.close()
    return results


def _evaluate(attributor, logprob_fn, X, enc: Encoded, ex: Example, todo: list[str], have: dict,
              settings: RunSettings, want_stab: bool) -> dict:
    """Scores, metrics and (if wanted) stability of the methods ``todo`` for one (example, target)."""
    # Only stability missing: reuse the stored scores and metrics instead of recomputing them.
    reuse = all(m in have for m in todo)
    if reuse:
        scores = {m: torch.tensor(have[m]["scores"], dtype=torch.float64) for m in todo}
        extra = {}
    else:
        scores, seconds, extra = method_scores(attributor, enc, todo, settings)
    stab = stability(attributor, enc, todo, scores, settings) if want_stab else {}
    out = {}
    for m in todo:
        key = preset_key(m)
        base = have[m] if reuse else {
            **example_metrics(logprob_fn, X, enc, ex, scores[m], settings),
            "seconds": seconds[m],
            "scores": [float(v) for v in scores[m].tolist()],
            **({"preset_options": key} if key is not None else {}),
            **({"pos_tagger": settings.pos_tagger()} if m == "reagent" else {}),
            **({"sink_gate_mass": extra["sink_gate_mass"]} if "sink_gate_mass" in extra and m.startswith("heta_sink")
               else {}),
        }
        out[m] = {**base, **stab.get(m, {})}
    return out


def rescore(examples: list[Example], out_dir: str | Path, settings: RunSettings, *, attributor=None,
            progress: bool = True) -> None:
    """Recompute every per-example metric from the stored scores (after a metric changed); keeps the
    stability values and timings, rewrites ``results.jsonl`` with one merged line per (example, target)."""
    from tqdm.auto import tqdm

    path = Path(out_dir) / "results.jsonl"
    done = _load_done(path, settings.key(), settings.pos_tagger())
    if attributor is None:
        from ..api import Attributor

        attributor = Attributor.from_pretrained(settings.model)
    logprob_fn = mt.model_logprob_fn(attributor.adapter)
    top: dict[tuple[str, str], dict] = {}  # per-record facts besides the methods (sink gate mass, target token)
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            top.setdefault((rec["id"], rec.get("target", "gold")), {}).update(
                {k: v for k, v in rec.items() if k not in ("methods", "settings")})
    lines = []
    for ex in tqdm(examples, desc="rescore", disable=not progress):
        kinds = [k for k in TARGETS if (ex.id, k) in done]
        if not kinds:
            continue
        gold_enc = encode(attributor.tokenizer, ex)
        X = attributor.adapter.embed(torch.tensor(gold_enc.ids, device=attributor.adapter.device)).detach()
        facts = prediction_facts(logprob_fn, X, gold_enc.target_id, attributor.tokenizer)
        for kind in kinds:
            enc = with_target(gold_enc, kind, facts)
            methods = {}
            for m, old in done[(ex.id, kind)].items():
                a = torch.tensor(old["scores"], dtype=torch.float64)
                keep = {k: v for k, v in old.items()
                        if k.startswith("stability") or k in ("seconds", "scores", "preset_options")}
                methods[m] = {**example_metrics(logprob_fn, X, enc, ex, a, settings), **keep}
            lines.append(json.dumps({**top.get((ex.id, kind), {}), "id": ex.id, "target": kind, **facts,
                                     "settings": settings.key(), "methods": methods}))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ report
METRIC_COLUMNS = [
    ("soft_nc", "Soft-NC ↑"), ("soft_ns", "Soft-NS ↑"), ("comprehensiveness", "Comp AOPC ↑"),
    ("sufficiency", "Suff AOPC ↓"), ("comprehensiveness_logp", "Comp AOPC log p ↑"),
    ("sufficiency_logp", "Suff AOPC log p ↓"), ("dsa", "DSA ↑"), ("f1", "F1 ↑"), ("support_share", "support"),
    ("distractor_share", "distractor"), ("question_share", "question+cue"), ("first_token_share", "1st token"),
    ("stability_noise", "ρ noise ↑"), ("stability_seed", "ρ seed ↑"), ("seconds", "s/example"),
]


def summarize(records: list[dict], methods: list[str]) -> list[dict]:
    """One row per method: mean, standard error and count of every metric over the records."""
    rows = []
    for m in methods:
        per = [r["methods"][m] for r in records if m in r["methods"]]
        if not per:
            continue
        row = {"method": m, "n": len(per)}
        for col, _ in METRIC_COLUMNS:
            mean, sem, n = mt.mean_sem([p.get(col) for p in per])
            row[col], row[col + "_sem"], row[col + "_n"] = mean, sem, n
        rows.append(row)
    return rows


def slice_records(records: list[dict], name: str) -> list[dict]:
    """The records of report slice ``name`` (:data:`SLICES`). Records without a ``target`` explain the gold
    token; ``gold_top1`` needs the prediction facts (``gold_is_top1``) that :func:`run_curated` returns."""
    for slice_name, kind, top1_only, _ in SLICES:
        if slice_name == name:
            return [r for r in records if r.get("target", "gold") == kind and (not top1_only or r["gold_is_top1"])]
    raise HetaInputError(f"unknown slice {name!r}; choose from {', '.join(s[0] for s in SLICES)}")


def summarize_slices(records: list[dict], methods: list[str]) -> dict[str, list[dict]]:
    """:func:`summarize` of every slice of :data:`SLICES` that has records."""
    out = {}
    for name, *_ in SLICES:
        rows = summarize(slice_records(records, name), methods)
        if rows:
            out[name] = rows
    return out


def _fmt(v: float, sem: float | None = None) -> str:
    if v is None or math.isnan(v):
        return "–"
    return f"{v:.3f}" if sem is None or math.isnan(sem) else f"{v:.3f} ± {sem:.3f}"


def _table(rows: list[dict]) -> list[str]:
    lines = ["| method | n | " + " | ".join(h for _, h in METRIC_COLUMNS) + " |",
             "|---|---|" + "---|" * len(METRIC_COLUMNS)]
    for r in rows:
        cells = []
        for c, _ in METRIC_COLUMNS:
            sem = None if c in ("seconds", "support_share", "distractor_share", "question_share", "first_token_share") else r[c + "_sem"]
            cell = _fmt(r[c], sem)
            if c.startswith("stability") and r[c + "_n"]:
                cell += f" (n={r[c + '_n']})"
            cells.append(cell)
        lines.append(f"| {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
    return lines


def write_report(rows: list[dict] | dict[str, list[dict]], out_dir: str | Path, *, plots: bool = True,
                 title: str = "", records: list[dict] | None = None) -> list[Path]:
    """``summary.csv``, ``summary.md`` and (matplotlib installed) ``plots/*.png``; returns the paths.

    ``rows`` is one table (:func:`summarize`) or one per slice (:func:`summarize_slices`): each slice is a
    section of ``summary.md``, a value of the ``slice`` column of ``summary.csv``, and its plots go to
    ``plots/`` (slice ``all``) or ``plots/<slice>/``. With ``records``, ``targets.csv`` lists per example
    the gold token, its probability and rank, and the model's greedy token.
    """
    import csv

    slices = rows if isinstance(rows, dict) else {"all": rows}
    about = {name: what for name, _, _, what in SLICES}
    out = Path(out_dir)
    written = []
    with (out / "summary.csv").open("w", newline="", encoding="utf-8") as f:
        cols = ["slice", "method", "n"] + [c + s for c, _ in METRIC_COLUMNS for s in ("", "_sem", "_n")]
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for name, srows in slices.items():
            for r in srows:
                w.writerow({"slice": name} | {c: (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in cols[1:]})
    written.append(out / "summary.csv")
    lines = [f"# {title}" if title else ""]
    for name, srows in slices.items():
        if isinstance(rows, dict):
            lines += ["", f"## Slice `{name}`: {about.get(name, name)}"]
        lines += [""] + _table(srows)
    names = dict.fromkeys(r["method"] for srows in slices.values() for r in srows)
    lines += ["", "Mean ± standard error over examples. " + "; ".join(f"{k}: {METHODS[k]}" for k in names)]
    (out / "summary.md").write_text("\n".join(lines).lstrip() + "\n", encoding="utf-8")
    written.append(out / "summary.md")
    if records is not None:
        written.append(_write_targets(records, out / "targets.csv"))
    if plots:
        for name, srows in slices.items():
            written += _plots(srows, out / "plots" if name == "all" else out / "plots" / name)
    return written


def _write_targets(records: list[dict], path: Path) -> Path:
    import csv

    cols = ["id", "gold_token", "p_gold", "gold_rank", "gold_is_top1", "greedy_token", "p_greedy"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        seen = set()
        for r in records:
            if r["id"] in seen or "p_gold" not in r:
                continue
            seen.add(r["id"])
            w.writerow({**r, "p_gold": f"{r['p_gold']:.4g}",
                        "p_greedy": f"{r['p_greedy']:.4g}"})
    return path


def _plots(rows: list[dict], plot_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional: requirements/evaluation.txt installs it
        return []
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    faith = [("soft_nc", "Soft-NC"), ("soft_ns", "Soft-NS"), ("comprehensiveness", "Comp"),
             ("sufficiency", "Suff (↓)"), ("dsa", "DSA"), ("f1", "F1")]
    shares = [("distractor_share", "distractor"), ("support_share", "support"), ("question_share", "question+cue")]
    for r in rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        vals = [r[c] for c, _ in faith]
        errs = [0 if math.isnan(r[c + "_sem"]) else r[c + "_sem"] for c, _ in faith]
        ax1.bar([n for _, n in faith], vals, yerr=errs, color="tab:green")
        ax1.axhline(0, color="k", lw=0.5)
        ax1.set_title(f"{r['method']}: metrics (n={r['n']})")
        ax1.tick_params(axis="x", labelrotation=30)
        ax2.bar([n for _, n in shares], [r[c] for c, _ in shares], color=["tab:red", "tab:blue", "tab:gray"])
        ax2.set_ylim(0, 1)
        ax2.set_title(f"attribution share (1st token {r['first_token_share']:.2f})")
        fig.tight_layout()
        p = plot_dir / f"{r['method']}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    names = [r["method"] for r in rows]
    for ax, (c, n) in zip(axes.flat, faith, strict=True):
        ax.bar(names, [r[c] for r in rows], yerr=[0 if math.isnan(r[c + "_sem"]) else r[c + "_sem"] for r in rows],
               color=["tab:orange" if x.startswith("heta") else "tab:gray" for x in names])
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(n)
        ax.tick_params(axis="x", labelrotation=75, labelsize=7)
    fig.tight_layout()
    p = plot_dir / "summary.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return written + [p]
