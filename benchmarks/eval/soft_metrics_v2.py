"""Recompute the stored Soft-NC / Soft-NS of a results folder under SPEC §5 as of 2026-12 (one distance D for
Soft-S, Soft-C and S_0, as the ReAGent authors' evaluator), from the stored scores, keeping the old values.

    python benchmarks/eval/soft_metrics_v2.py OUT [--data PATH] [--model default]

Until 2026-12, Soft-S used the Hellinger norm and S_0 a KL divergence (and Soft-NS was capped at 10). Every
record's ``soft_nc``, ``soft_ns``, ``soft_s`` and ``s0`` are recomputed (``soft_c`` is unchanged: the same D);
the previous values move to ``soft_nc_v1``, ``soft_ns_v1``, ``soft_s_v1``, ``s0_v1``. ``--relabel-only`` (or the
records outside ``--targets``) only moves the old values, so no stale number is read as SPEC §5's. Records that already carry
``soft_nc_v1`` are left alone, so the script can be rerun. Writes OUT/soft_v1_v2.md: old and new means per method
and slice, side by side. The Bernoulli draws are the harness's (same seed and sample count as each record).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from heta_fast import Attributor
from heta_fast.evaluation import metrics as mt
from heta_fast.evaluation.curated import SLICES, encode
from heta_fast.evaluation.data import default_data_path, load_examples

SOFT_KEYS = ("soft_nc", "soft_ns", "soft_s", "s0")


def _sharing_clean_rows(logprob_fn):
    """``logprob_fn`` for the batches of :func:`metrics.soft_erasure` on one X: its first two rows (the clean X and
    the all-zero input) are the same for every method, so they run once and are reused."""
    first: list = []

    def fn(batch):
        if not first:
            first.append(logprob_fn(batch[:2]))
        return torch.cat([first[0], logprob_fn(batch[2:])])

    return fn


def relabel(vals: dict) -> None:
    """Keep a record's old soft values as ``*_v1`` only; the SPEC §5 values stay absent (reported as NaN)."""
    if "soft_nc_v1" not in vals:
        for k in SOFT_KEYS:
            vals[f"{k}_v1"] = vals.pop(k, None)


def recompute(out: Path, data: Path | None, model: str, targets: tuple[str, ...],
              methods: tuple[str, ...] | None = None) -> list[dict]:
    """Recompute the records explaining ``targets`` (only ``methods``, when given); relabel the rest (everything
    when ``data`` is None)."""
    path = out / "results.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    todo = [r for r in records if any("soft_nc_v1" not in m for m in r["methods"].values())]
    chosen = [r for r in todo if data is not None and r.get("target", "gold") in targets]
    for r in todo:
        if not any(r is c for c in chosen):
            for vals in r["methods"].values():
                relabel(vals)
    if chosen:
        examples = {ex.id: ex for ex in load_examples(data)}
        attributor = Attributor.from_pretrained(model)
        base_logprob_fn = mt.model_logprob_fn(attributor.adapter)
    for i, rec in enumerate(chosen, 1):
        ex = examples[rec["id"]]
        settings = rec["settings"]
        # The soft metrics compare whole next-token distributions after the prompt: no target involved.
        enc = encode(attributor.tokenizer, ex)
        X = attributor.adapter.embed(torch.tensor(enc.ids, device=attributor.adapter.device)).detach()
        logprob_fn = _sharing_clean_rows(base_logprob_fn)  # one clean and one all-zero forward per record
        for name, vals in rec["methods"].items():
            if "soft_nc_v1" in vals or "scores" not in vals:
                continue
            if methods is not None and name not in methods:
                relabel(vals)
                continue
            new = mt.soft_erasure(logprob_fn, X, torch.tensor(vals["scores"], dtype=torch.float64),
                                  seed=settings["seed"], samples=settings["soft_samples"])
            for k in SOFT_KEYS:
                vals[f"{k}_v1"] = vals.get(k)
                vals[k] = new[k]
        if i % 20 == 0:
            print(f"{i}/{len(chosen)} records", flush=True)
            _write(path, records)  # a rerun resumes: finished methods carry soft_nc_v1
    _write(path, records)
    return records


def _write(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def side_by_side(records: list[dict], out: Path) -> Path:
    lines = ["# Soft-NC and Soft-NS before and after the SPEC §5 change (2026-12)", "",
             "v1: Soft-S with the Hellinger norm, S_0 = 1 − KL(π ‖ π^all), Soft-NS capped at 10. "
             "v2 (SPEC §5 now, the ReAGent authors' evaluator): Soft-S = 1 − D, S_0 = 1 − D(π^all, π) with "
             "D = Σ_v (√π'_v − √π_v)² / √2. Same stored scores, same Bernoulli draws; mean ± standard error.", ""]
    for name, kind, top1_only, what in SLICES:
        rows = [r for r in records if r.get("target", "gold") == kind and (not top1_only or r.get("gold_is_top1"))]
        if not rows:
            continue
        lines += [f"## {name}: {what} ({len(rows)} records)", "",
                  "| method | n | Soft-NC v1 | Soft-NC v2 | Soft-NS v1 | Soft-NS v2 |", "|---|---|---|---|---|---|"]
        methods = sorted({m for r in rows for m, v in r["methods"].items() if v.get("soft_nc") is not None})
        for m in methods:
            cells = [str(sum(1 for r in rows if r["methods"].get(m, {}).get("soft_nc") is not None))]
            for k in ("soft_nc", "soft_ns"):
                for key in (f"{k}_v1", k):
                    mean, sem, _ = mt.mean_sem([r["methods"][m][key] for r in rows
                                           if m in r["methods"] and r["methods"][m].get(key) is not None])
                    cells.append(f"{mean:.3f} ± {sem:.3f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    path = out / "soft_v1_v2.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=None, help="the examples (default: the curated set)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--targets", nargs="+", default=["gold", "greedy"], help="records to recompute; the others "
                    "are relabelled (old values as *_v1, new ones absent)")
    ap.add_argument("--methods", nargs="+", help="recompute only these methods; relabel the others")
    ap.add_argument("--relabel-only", action="store_true", help="recompute nothing (no model needed)")
    args = ap.parse_args()
    data = None if args.relabel_only else (args.data or default_data_path())
    records = recompute(args.out, data, args.model, tuple(args.targets), args.methods and tuple(args.methods))
    if data is not None:
        print(side_by_side(records, args.out))


if __name__ == "__main__":
    main()
