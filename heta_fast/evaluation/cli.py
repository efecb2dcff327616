"""``heta-fast eval …``: evaluation sub-commands (registered by ``heta_fast.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import add_option_flags


def add_parser(subparsers) -> None:
    """Register ``eval`` (with ``curated``) on the top-level sub-parsers."""
    ev = subparsers.add_parser("eval", help="evaluate attribution methods (faithfulness, DSA, F1, stability)")
    evsub = ev.add_subparsers(dest="eval_command", required=True)
    c = evsub.add_parser(
        "curated", help="every method on the curated distractor/support QA set",
        description="Explain the first token of each gold answer (teacher-forced after the question and "
                    "'\\nAnswer:', or the example's own cue) and the model's own greedy answer with every "
                    "method; per-example metrics go to OUT/results.jsonl (a rerun skips finished examples), "
                    "the summary, in three slices (all examples; gold token = the model's top-1; the model's "
                    "own answer), to OUT/summary.{md,csv}, OUT/targets.csv and OUT/plots/.",
    )
    c.add_argument("--data", help="the released JSON or a JSONL of examples (default: ../shared/data/"
                   "curated_qa_100.json beside the checkout)")
    c.add_argument("--out", default="heta_eval", help="output folder (default: ./heta_eval)")
    c.add_argument("--limit", type=int, help="only the first N examples")
    c.add_argument("--methods", nargs="+", default=["all"], help="method names (space or comma separated) or 'all'")
    c.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m' (Gemma-3-270M) or a local HF folder")
    c.add_argument("--targets", nargs="+", default=["gold", "greedy"], choices=["gold", "greedy"],
                   help="what to explain: the gold answer's first token and/or the model's greedy answer "
                        "(default: both)")
    # Like the "fast" preset: every method runs on every example, so the default is a cheap S.
    add_option_flags(c, names=("hessian", "rank", "num_probes", "seed"),
                     defaults={"hessian": "lowrank", "rank": 16, "num_probes": 4, "seed": 0})
    c.add_argument("--sink-token-id", type=int, help="sink for the heta_sink* methods (default: <|endoftext|>/BOS)")
    c.add_argument("--stability", type=int, default=0, metavar="N",
                   help="also measure stability (noise on X, another seed) on the first N examples")
    c.add_argument("--noise-sigma", type=float, default=0.01, help="noise std relative to the RMS of X")
    c.add_argument("--reagent-pos-tags", metavar="FILE",
                   help="ReAGent's part-of-speech classes from FILE (benchmarks/eval/data/reagent/pos_tags.py) instead "
                        "of NLTK's tagger, whose data needs a download")
    c.add_argument("--no-plots", action="store_true")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--rescore", action="store_true",
                   help="recompute the metrics of finished examples from their stored scores, then report")
    c.add_argument("--report-only", action="store_true",
                   help="compute nothing: report the examples already in OUT/results.jsonl")
    c.add_argument("--list-methods", action="store_true", help="print the methods and exit")
    c.set_defaults(func=curated_command)


def curated_command(args: argparse.Namespace) -> int:
    from ..errors import HetaInputError
    from .curated import METHODS, RunSettings, parse_methods, run_curated, summarize_slices, write_report
    from .data import default_data_path, load_examples

    if args.list_methods:
        for name, what in METHODS.items():
            print(f"{name:<22} {what}")
        return 0
    methods = parse_methods(args.methods)
    data = Path(args.data) if args.data else default_data_path()
    if not data.exists():
        raise HetaInputError(f"data file {data} not found; pass --data PATH")
    examples = load_examples(data)
    if args.limit is not None:
        if args.limit < 1:
            raise HetaInputError(f"--limit must be >= 1, got {args.limit}")
        examples = examples[: args.limit]
    settings = RunSettings(model=args.model, hessian=args.hessian, rank=args.rank, num_probes=args.num_probes,
                           seed=args.seed, sink_token_id=args.sink_token_id, noise_sigma=args.noise_sigma,
                           stability_examples=args.stability, reagent_pos_tags=args.reagent_pos_tags)
    if args.rescore:
        from .curated import rescore

        rescore(examples, args.out, settings, progress=not args.quiet)
    if args.report_only:
        from .curated import load_records

        records = load_records(examples, args.out, settings, targets=args.targets)
        if not records:
            raise HetaInputError(f"--report-only: no finished examples with these settings in {args.out}")
    else:
        records = run_curated(examples, args.out, methods, settings, targets=args.targets, progress=not args.quiet)
    slices = summarize_slices(records, methods)
    n = len({r["id"] for r in records})
    paths = write_report(slices, args.out, plots=not args.no_plots, records=records,
                         title=f"{data.name}: {n} examples, model {args.model}")
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} plots" if len(paths) > 3 else ""))
    return 0
