"""Needle in a haystack: does sentence-level attribution find the sentence the answer came from? (issue 16)

    python benchmarks/eval/needle.py [--tokens 384 1024] [--depths 0.1 0.5 0.9] [--threads 2] [--out DIR]
    python benchmarks/eval/needle.py --distractors --out benchmarks/eval/needle_distractors
    python benchmarks/eval/needle.py --documents a.txt b.txt --needles held_out.jsonl --out /tmp/held_out

Haystacks: by default sections of the Python Language Reference shipped with CPython (``pydoc_data.topics``,
PSF License 2.0), or the plain-text files given with ``--documents``; each is cut at a sentence boundary near
``--tokens`` tokens. Needles (``--needles``: JSON lines ``{"needle": ..., "cue": ..., "answer": ...,
"distractor": ...}``, or the ones below, written for this test) are fact sentences planted between two sentences
at each depth; with ``--distractors`` each needle's distractor (a sentence with most of its words and another
answer) is planted half a document away, so citing whatever resembles the cue is not enough. The cue
after the document repeats the needle's words up to the answer (the default model does not answer a bare
"Answer:" cue about a needle, but completes a cue it can copy); the target is the answer's first token. Each
row records its log-probability and whether it is the model's top-1 (the model predicts what is explained).

Methods, scored over the document's sentences (the cue and special tokens excluded):
* ``heta_units``: HETA with ``units="sentence"`` (whole context, exact unit KL; the ``document`` preset unless
  ``--preset``/``--set`` change it, which scores blocks first and the sentences of the best 2 on long inputs;
  the options are written to the summary); ``--variants NAME:OPTION=VALUE,...`` adds ``heta_units[NAME]`` runs
  (e.g. ``flat:coarse=none`` for every sentence at one level, ``k3:expand=3``), each with its plan beside it;
* ``heta_tokens``: HETA at the token level with the same options, token scores summed per sentence;
* ``contextcite``: ContextCite 0.0.4 with its own ablation and LASSO code (``heta_fast.evaluation.peers``), the
  sentences as its sources (their token ranges; its own splitter needs a download), the prompt and the answer's
  first token instead of its chat template and generation, ``--ablations`` ablations (64, its default);
* ``loo``: leave-one-out at sentence level: the drop of log p(answer) when the sentence is deleted from the
  text (one forward per sentence; the ablation ContextCite approximates);
* ``integrated_gradients``: token IG (16 steps from the zero embedding) summed per sentence;
* ``random``: seeded random scores.
Metrics per method: cite@1 (the top sentence is the needle), the needle's rank, its share of the positive
attribution mass, with distractors distractor@1 and needle above distractor; seconds and peak memory (the
process's peak RSS during the method, model included, ``heta_fast.profiling.track``) per run, all methods in one process one after
another. Rows are appended to ``OUT/needle_results.jsonl`` as they finish (a rerun skips finished rows) and the
tables (one per ``--tokens`` length) go to ``OUT/needle_summary.md``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from heta_fast import Attributor
from heta_fast.evaluation.baselines import integrated_gradients
from heta_fast.units import sentence_spans

HERE = Path(__file__).resolve().parent
NEEDLES = [  # written for this test: facts no document contains; each distractor shares most of its words
    {"needle": "The archive key for the northern lighthouse is kept under the name Marigold.",
     "cue": "The archive key for the northern lighthouse is kept under the name", "answer": " Marigold",
     "distractor": "The archive key for the southern boathouse is kept under the name Bellweather."},
    {"needle": "Every Tuesday the harbour clock is wound by a keeper called Ortensia.",
     "cue": "Every Tuesday the harbour clock is wound by a keeper called", "answer": " Ortensia",
     "distractor": "Every Sunday the chapel bell is rung by a keeper called Leopold."},
    {"needle": "The secret ingredient in the village bakery's bread is a spoonful of cardamom.",
     "cue": "The secret ingredient in the village bakery's bread is a spoonful of", "answer": " cardamom",
     "distractor": "The secret ingredient in the town brewery's ale is a spoonful of honey."},
    {"needle": "Our expedition reached the glacier camp after exactly nineteen days of walking.",
     "cue": "Our expedition reached the glacier camp after exactly", "answer": " nineteen",
     "distractor": "Their expedition reached the desert oasis after exactly seven days of riding."},
]
SECTIONS = ("execmodel", "exceptions", "naming", "compound", "import", "assignment")
METHODS = ("heta_units", "heta_tokens", "contextcite", "loo", "integrated_gradients", "random")


def documents(paths: list[str] | None) -> list[str]:
    """The haystack texts: the given files, or rotations of the Python Language Reference sections."""
    if paths:
        return [Path(p).read_text(encoding="utf-8") for p in paths]
    import pydoc_data.topics as topics

    keys = [k for k in SECTIONS if k in topics.topics]
    return ["\n\n".join(topics.topics[k] for k in keys[i:] + keys[:i]) for i in range(len(keys))]


def haystack(tokenizer, text: str, n_tokens: int) -> str:
    """``text`` cut after the last sentence that ends within its first ``n_tokens`` tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    cut = enc["offset_mapping"][min(n_tokens, len(enc["input_ids"]) - 1)][1]
    ends = [b for _, b in sentence_spans(text) if b <= cut]
    if not ends:
        raise SystemExit(f"no sentence ends within the first {n_tokens} tokens of a document")
    return text[: max(ends)]


def plant(doc: str, needle: str, depth: float) -> tuple[str, tuple[int, int]]:
    """The document with the needle inserted after the first prose sentence (one ending in . ! or ?, not a
    heading) at or after ``depth`` of the sentences; returns it and the needle's span."""
    spans = [(a, b) for a, b in sentence_spans(doc) if doc[b - 1] in ".!?"]
    at = spans[min(len(spans) - 1, max(0, int(depth * len(spans))))][1]
    return doc[:at] + " " + needle + doc[at:], (at + 1, at + 1 + len(needle))


def per_sentence(token_scores, offsets, sentences) -> list[float]:
    """Token scores summed per sentence: a token counts for the sentence its (non-empty) character range
    overlaps first; special tokens (empty ranges) and tokens outside the sentences count for none."""
    out = [0.0] * len(sentences)
    for score, (s, e) in zip(token_scores, offsets, strict=True):
        if score is None or e <= s:
            continue
        j = next((j for j, (a, b) in enumerate(sentences) if s < b and a < e), None)
        if j is not None:
            out[j] += float(score)
    return out


def unit_per_sentence(units, sentences) -> tuple[list[float], list[int]]:
    """Per document sentence: the score of the unit whose character span holds it (0 for a unit left unscored by
    levels: it has no score of its own) and the unit's rank among all units (units and sentences come from the
    same splitter, so each document sentence is one unit)."""
    def unit(a, b):
        return next(u for u in units if u.char_span and u.char_span[0] <= a and b <= u.char_span[1])

    picked = [unit(a, b) for a, b in sentences]
    # The rank among the document's sentences (the cue after them is a unit too, and not a candidate).
    return [u.score if u.scored else 0.0 for u in picked], [1 + sum(v.rank < u.rank for v in picked) for u in picked]


def level_one(res, sentences) -> list[dict]:
    """Level 1 of a levelled run, per coarse unit: the document sentences it holds (first, end; the cue's block
    ends past them), its shares of the blocks' M, S and I, its score and rank, and whether it was expanded: what
    to read when levels lose a needle (which blocks took the expansions, and on which term)."""
    blocks = [u for u in res.coarse_units if u.level == 1]  # the coarsest level comes first in coarse_units
    totals = {c: sum(getattr(b, c) or 0.0 for b in blocks) or 1.0 for c in "MSI"}

    def top(j: int) -> int:  # the level-1 unit above unit j (through the levels between them)
        p = res.units[j].parent
        while res.coarse_units[p].parent is not None:
            p = res.coarse_units[p].parent
        return p

    owner = [top(next(j for j, u in enumerate(res.units) if u.char_span and u.char_span[0] <= a and b <= u.char_span[1]))
             for a, b in sentences]
    out = []
    for c, b in enumerate(blocks):
        held = [i for i, c_i in enumerate(owner) if c_i == c]
        out.append({"sentences": [held[0], held[-1] + 1] if held else None, "rank": b.rank, "score": b.score,
                    "expanded": b.refined,
                    **{f"{k}_share": None if getattr(b, k) is None else getattr(b, k) / totals[k] for k in "MSI"}})
    return out


def answer_logprob(attr: Attributor, text: str, answer_id: int) -> tuple[float, int]:
    """log p(answer's first token | text) and the model's top-1 id there (one forward, tokenised as attribute
    tokenises, special tokens included)."""
    ids = torch.tensor(attr.tokenizer(text)["input_ids"], device=attr.adapter.device)
    with torch.no_grad(), attr.adapter.attached():
        logp = torch.log_softmax(attr.adapter.last_logits(attr.adapter.embed(ids)).double(), -1)
    return float(logp[answer_id]), int(logp.argmax())


def sentence_token_ranges(offsets, sentences) -> list[tuple[int, int]]:
    """Each sentence's tokens as a ``[start, end)`` range of the prompt's ids: the tokens whose (non-empty)
    character range overlaps it first (as :func:`per_sentence` assigns them)."""
    owner: dict[int, list[int]] = {}
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        j = next((j for j, (a, b) in enumerate(sentences) if s < b and a < e), None)
        if j is not None:
            owner.setdefault(j, []).append(i)
    if sorted(owner) != list(range(len(sentences))):
        raise SystemExit("a sentence has no token of its own")
    return [(min(owner[j]), max(owner[j]) + 1) for j in range(len(sentences))]


def run_one(attr: Attributor, opts: dict, prompt: str, sentences, answer: str, methods, seed: int,
            variants: dict | None = None, ablations: int = 64) -> dict:
    """One haystack: every method's per-sentence scores (and, for HETA, ranks), seconds and peak memory."""
    from heta_fast.evaluation.peers import contextcite_scores
    from heta_fast.profiling import track

    tok = attr.tokenizer
    answer_id = tok(answer, add_special_tokens=False)["input_ids"][0]
    # Explain the first token only: a continuation string is explained token by token, so pass just that token.
    first = tok.decode([answer_id])
    if tok(first, add_special_tokens=False)["input_ids"] != [answer_id]:
        raise SystemExit(f"the answer's first token {first!r} does not re-tokenise to itself")
    row: dict = {"answer_token": first}
    row["logp_answer"], top1 = answer_logprob(attr, prompt, answer_id)
    row["answer_is_top1"] = top1 == answer_id
    scores, ranks, seconds, peak = {}, {}, {}, {}
    runs = []  # (method, callable returning scores or (scores, ranks))
    heta = {"heta_units": {}} if "heta_units" in methods else {}
    heta.update({f"heta_units[{name}]": kw for name, kw in (variants or {}).items()})

    def heta_run(kw, name):
        res = attr.attribute(prompt, first, **{"units": "sentence", **opts, **kw})[0]
        row.setdefault("tokens", res.target_position)
        per, rk = unit_per_sentence(res.units, sentences)
        if res.coarse_units is not None:
            row.setdefault("level1", {})[name] = level_one(res, sentences)
        return per, rk, res

    for name, kw in heta.items():
        runs.append((name, lambda kw=kw, name=name: heta_run(kw, name)))
    if "heta_tokens" in methods:
        def heta_tokens():
            res = attr.attribute(prompt, first, **{**opts, "units": "token", "coarse": "none"})[0]
            return per_sentence(res.scores, res.offsets, sentences)
        runs.append(("heta_tokens", heta_tokens))
    enc = tok(prompt, return_offsets_mapping=True)
    if "contextcite" in methods:
        def contextcite():
            ranges = sentence_token_ranges(enc["offset_mapping"], sentences)
            sc = contextcite_scores(attr.model, enc["input_ids"], answer_id, tokenizer=tok, units=ranges,
                                    num_ablations=ablations, seed=seed)
            return [float(sc[a:b].sum()) for a, b in ranges]
        runs.append(("contextcite", contextcite))
    if "loo" in methods:
        runs.append(("loo", lambda: [row["logp_answer"] - answer_logprob(attr, prompt[:a] + prompt[b:], answer_id)[0]
                                     for a, b in sentences]))
    if "integrated_gradients" in methods:
        def ig():
            ids = torch.tensor(enc["input_ids"], device=attr.adapter.device)
            with attr.adapter.attached():
                return per_sentence(integrated_gradients(attr.adapter, ids, answer_id).tolist(),
                                    enc["offset_mapping"], sentences)
        runs.append(("integrated_gradients", ig))
    for name, fn in runs:
        # The plan is made before the run, outside its timing: after a long run the allocator keeps the memory it
        # freed, and a plan made then reads less free memory than the run's own budget saw.
        plan = attr.plan(prompt, first, **{"units": "sentence", **opts, **heta[name]}) if name in heta else None
        with track(attr.adapter.device) as watch:
            out = fn()
        if isinstance(out, tuple):
            out, ranks[name], res = out
            row.setdefault("plan_vs_actual", {})[name] = plan_vs_actual(plan, res)
        scores[name] = out
        seconds[name] = watch.wall_s
        # The process's peak during the method (model included): freed memory stays with the allocator after the
        # first method, so a rise above each method's start would under-count the later ones.
        peak[name] = None if watch.peak_rss_bytes is None else watch.peak_rss_bytes / 2**20
    if "random" in methods:
        rng = random.Random(seed)
        scores["random"] = [rng.random() for _ in sentences]
    row["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    row["peak_mib"] = {k: None if v is None else round(v) for k, v in peak.items()}
    row["scores"] = scores
    row["ranks"] = ranks
    return row


def plan_vs_actual(plan, res) -> dict:
    """The plan's seconds and peak (made before the run, same options) beside the run's stage seconds."""
    return {"plan_seconds": None if plan.seconds is None else round(plan.seconds, 1),
            "plan_expected_seconds": None if plan.expected_seconds is None else round(plan.expected_seconds, 1),
            "plan_peak_mib": round(plan.peak_memory / 2**20), "actual_seconds": round(res.timings["total"], 1),
            "plan_stages": plan_stage_seconds(plan), "stages": {k: round(v, 1) for k, v in res.timings.items()}}


def plan_stage_seconds(plan) -> dict:
    """The plan's expected seconds per component (gate, S, I), to set beside the run's stages."""
    out: dict[str, float] = {}
    for stage in plan.stages:
        if stage.expected_seconds is not None:
            out[stage.component] = out.get(stage.component, 0.0) + stage.expected_seconds
    return {k: round(v, 1) for k, v in out.items()}


def metrics(row: dict) -> dict:
    """Per method: the needle's share of the positive mass, cite@1 (ties count against the method), the needle's
    rank (1 = top; HETA's own unit ranks where stored, so levels rank scored units first); with a planted
    distractor also its share, distractor@1 (the distractor is the top sentence) and whether the needle is above
    it."""
    out = {}
    n, dis = row["needle_index"], row.get("distractor_index")
    for name, vals in row["scores"].items():
        pos = [max(0.0, v) for v in vals]
        total = sum(pos)
        rank = row.get("ranks", {}).get(name)
        if rank is None:  # rank by score, ties against the method
            rank = [1 + sum(w > v for w in vals) + sum(w == v for w in vals) - 1 for v in vals]
        out[name] = {"share": pos[n] / total if total > 0 else 0.0, "rank": rank[n],
                     "cite1": int(rank[n] == 1 and sum(r == 1 for r in rank) == 1)}
        if dis is not None:
            out[name]["distractor_share"] = pos[dis] / total if total > 0 else 0.0
            out[name]["distractor1"] = int(rank[dis] == 1)
            out[name]["above_distractor"] = int(rank[n] < rank[dis])
    return out


def summary(rows: list[dict], opts: dict, settings: dict) -> str:
    """One table per haystack length: every method side by side (methods in the order they ran)."""
    lines = [f"Settings: {json.dumps(settings)}; HETA options: {json.dumps(opts)}.", ""]
    for length in sorted({r.get("haystack_tokens", settings["tokens"][0]) for r in rows}):
        rs = [r for r in rows if r.get("haystack_tokens", settings["tokens"][0]) == length]
        lines += _table(rs, length) + [""]
    return "\n".join(lines)


def _table(rows: list[dict], length: int) -> list[str]:
    methods = [m for m in rows[0]["scores"] if all(m in r["scores"] for r in rows)]
    pred = [r for r in rows if r["answer_is_top1"]]
    distractors = all(r.get("distractor_index") is not None for r in rows)
    n_sent = sorted(r["sentences"] for r in rows)
    n_tok = sorted(r.get("tokens", 0) for r in rows)
    lines = [f"**Haystack ~{length} tokens** ({n_tok[0]}–{n_tok[-1]} context tokens, {n_sent[0]}–{n_sent[-1]} "
             f"sentences): {len(rows)} runs ({len(pred)} where the answer is the model's top-1; median log p(answer) "
             f"{sorted(r['logp_answer'] for r in rows)[len(rows) // 2]:.2f}).", "",
             "| method | cite@1 | cite@1, top-1 runs | needle rank (median, worst) | needle share |"
             + (" distractor@1 | needle > distractor |" if distractors else "") + " s/run | peak MiB |",
             "|---|---|---|---|---|" + ("---|---|" if distractors else "") + "---|---|"]
    for m in methods:
        ms = [metrics(r)[m] for r in rows]
        ranks = sorted(x["rank"] for x in ms)
        cite = sum(x["cite1"] for x in ms)
        cite_p = sum(metrics(r)[m]["cite1"] for r in pred)
        secs = [r["seconds"].get(m) for r in rows if r["seconds"].get(m) is not None]
        peaks = [r.get("peak_mib", {}).get(m) for r in rows if r.get("peak_mib", {}).get(m) is not None]
        line = (f"| {m} | {cite}/{len(rows)} | {cite_p}/{len(pred)} | {ranks[len(ranks) // 2]}, {ranks[-1]} | "
                f"{sum(x['share'] for x in ms) / len(ms):.3f} |")
        if distractors:
            line += (f" {sum(x['distractor1'] for x in ms)}/{len(rows)} | "
                     f"{sum(x['above_distractor'] for x in ms)}/{len(rows)} |")
        line += (f" {sum(secs) / len(secs):.0f} |" if secs else " – |") + (f" {max(peaks)} |" if peaks else " – |")
        lines.append(line)
    return lines


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_case(attr: Attributor, docs: list[str], needles: list[dict], k: int, length: int, depth: float,
               distractors: bool) -> tuple[str, list[tuple[int, int]], dict]:
    """Needle k planted at ``depth`` of document k (cycling) cut near ``length`` tokens, its distractor half a
    document away with ``distractors``: the prompt (document, blank line, cue), the document's sentences (the cue
    after them is left out) and the row's description of the case."""
    nd = needles[k]
    d = k % len(docs)
    doc = haystack(attr.tokenizer, docs[d], length)
    text, dis_span = doc, None
    if distractors:  # planted first, half the document away from the needle
        text, dis_span = plant(doc, nd["distractor"], (depth + 0.5) % 1.0)
    text, needle_span = plant(text, nd["needle"], depth)
    if dis_span is not None and needle_span[0] <= dis_span[0]:
        shift = needle_span[1] - needle_span[0] + 1
        dis_span = (dis_span[0] + shift, dis_span[1] + shift)
    sentences = sentence_spans(text)
    for what, span in (("needle", needle_span), ("distractor", dis_span)):
        if span is not None and span not in sentences:
            raise SystemExit(f"{what} {k} is not one sentence of the splitter at depth {depth}")
    row = {"haystack_tokens": length, "document": d, "needle": k, "depth": depth, "sentences": len(sentences),
           "needle_index": sentences.index(needle_span),
           "distractor_index": None if dis_span is None else sentences.index(dis_span)}
    return text + "\n\n" + nd["cue"], sentences, row


def case_seed(k: int, depth: float) -> int:
    """The seed of needle k at ``depth`` for ContextCite's ablations and the random scores (HETA keeps its options'
    seed): fixed per case, so reruns agree."""
    return 1000 * k + int(100 * depth)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[384],
                    help="haystack lengths in tokens (before the needle); several run one after the other")
    ap.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--documents", nargs="+", help="plain-text haystack files (default: the Python reference)")
    ap.add_argument("--needles", help="JSON lines with needle, cue, answer (default: the built-in needles)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--distractors", action="store_true",
                    help="also plant each needle's distractor (same words, another answer) half a document away")
    ap.add_argument("--model", default="default")
    ap.add_argument("--preset", default="document",
                    help="HETA preset of heta_units and heta_tokens (heta_tokens with units='token'); 'default' for "
                         "the library defaults")
    ap.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE", help="HETA option overrides")
    ap.add_argument("--variants", nargs="*", default=[], metavar="NAME:OPTION=VALUE,...",
                    help="more HETA unit runs beside heta_units, e.g. flat:coarse=none k1:expand=1 (method "
                         "heta_units[NAME])")
    ap.add_argument("--ablations", type=int, default=64, help="ContextCite's number of ablations")
    ap.add_argument("--needle-range", type=int, nargs=2, default=None, metavar=("FIRST", "END"),
                    help="run needles FIRST … END−1 only (a partial run; the rest can follow into the same OUT)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "needle"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    needles = ([json.loads(line) for line in Path(args.needles).read_text().splitlines() if line.strip()]
               if args.needles else NEEDLES)
    opts = dict(parse_set(args.set), **({"preset": args.preset} if args.preset != "default" else {}))
    variants = {name: parse_set(spec.split(",")) for name, _, spec in (v.partition(":") for v in args.variants)}
    settings = {"model": args.model, "tokens": args.tokens, "depths": args.depths, "distractors": args.distractors,
                "documents": args.documents or "pydoc_data.topics", "needles": args.needles or "built-in",
                "variants": variants, "ablations": args.ablations, "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "needle_results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    done = {(r.get("haystack_tokens", args.tokens[0]), r["document"], r["needle"], r["depth"]) for r in rows}
    attr = Attributor.from_pretrained(args.model, progress=False)
    docs = documents(args.documents)
    picked = range(*args.needle_range) if args.needle_range else range(len(needles))
    for length in args.tokens:
        for k in picked:
            nd = needles[k]
            d = k % len(docs)  # needle k goes into document k (cycling), so needles and texts vary together
            for depth in args.depths:
                if (length, d, k, depth) in done:
                    continue
                prompt, sentences, row = build_case(attr, docs, needles, k, length, depth, args.distractors)
                row.update(run_one(attr, opts, prompt, sentences, nd["answer"], args.methods,
                                   seed=case_seed(k, depth), variants=variants, ablations=args.ablations))
                row["metrics"] = metrics(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("scores", "ranks")}), flush=True)
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    text = summary(rows, opts, settings)
    (out / "needle_summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
