"""``heta-fast`` command line: attribute text on the default (or a local) model."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import HetaError, HetaInputError
from .options import PRESETS, add_option_flags, options_from_preset, overrides_from_args


def _target(value: str | None):
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


# Further sub-commands live beside the feature they drive; each module has ``add_parser(subparsers)``
# which registers its parser with ``set_defaults(func=...)`` (func(args) -> exit code).
COMMAND_MODULES = ("heta_fast.evaluation.cli", "heta_fast.service.cli", "heta_fast.batch.cli")


def _add_feature_commands(sub) -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that feature is not part of this installation
            raise
        module.add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heta-fast", description="HETA token attribution for causal LMs")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attribute", help="explain why the model produces a target token")
    a.set_defaults(func=_attribute_command)
    a.add_argument("text", help="input text")
    a.add_argument("--target", help="position (int), or a continuation string explained token by token; "
                   "default: the last token of TEXT")
    a.add_argument("--generate", type=int, help="generate N tokens greedily and explain each")
    a.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m' (Gemma-3-270M) or a local HF folder")
    a.add_argument("--preset", default="default", choices=sorted(PRESETS))
    add_option_flags(a)
    a.add_argument("--json", metavar="FILE", help="write the result as JSON")
    a.add_argument("--html", metavar="FILE", help="write an HTML heatmap")
    a.add_argument("--by", default="scores", choices=["scores", "M", "S", "I"], help="what the heatmap shows")
    a.add_argument("--top", type=int, default=8, help="rows of the top-k table")
    a.add_argument("--no-color", action="store_true")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--profile", action="store_true", help="print per-stage seconds and peak memory")
    a.add_argument("--profile-trace", metavar="FILE", help="write a torch profiler trace (Chrome/Perfetto JSON)")
    a.add_argument("--report", metavar="FILE", help="write a standalone HTML report (heatmaps of score, M, S, I)")
    a.add_argument("--plot", metavar="FILE", help="write a PNG bar plot of the components")
    a.add_argument("--split-work", action="store_true", help="under torchrun: split this one attribution's S and I "
                   "over the ranks (gloo on CPUs, NCCL on GPUs); rank 0 prints and writes the result")
    a.add_argument("--plan", action="store_true", help="print what the run would do (windows or levels, units, "
                   "token passes, peak memory and seconds per stage) and exit without running it; with --json FILE "
                   "also write the plan as JSON")
    _add_feature_commands(sub)
    return parser


def _print_result(res, args) -> None:
    from .result import AttributionSequence

    items = res if isinstance(res, AttributionSequence) else [res]
    for r in items:
        print(r.heatmap(by=args.by, color=not args.no_color))
        print(f"target {r.target_token!r} at position {r.target_position} (log p = {r.target_logprob:.3f})")
        if r.sink_gate_mass is not None:
            print(f"attention sink (token id {r.options['sink_token']}) prepended: it took {r.sink_gate_mass:.2f} of the "
                  "gate, dropped from the result (M re-normalised over the context)")
        # Levels: what each coarse level scored, and which of its units were expanded (+).
        for level in sorted({u.level for u in r.coarse_units or []}):
            tier = [u for u in r.coarse_units if u.level == level]
            print(f"level {level}: {sum(u.scored for u in tier)} of {len(tier)} coarse units scored; + expanded "
                  f"(their units scored at level {level + 1})")
            for u in sorted(tier, key=lambda u: u.rank)[: args.top]:
                text = " ".join(u.text.split())
                score = f"{u.score:.4g}" if u.scored else f"({u.score:.4g})"
                print(f"{u.rank:>4}{'+' if u.refined else ' '} {u.token_range[0]:>5}-{u.token_range[1] - 1:<5}  "
                      f"{text[:41] + '...' if len(text) > 44 else text:<44} {score:>10}")
        if r.units:
            print(f"{'rank':>4}  {'tokens':>11}  {'unit':<44} {'score':>10} {'M':>8} {'S':>10} {'I':>10}"
                  + ("   (score in brackets: not scored, its coarse unit's)" if r.coarse_units else ""))
            for u in r.top_units(args.top):
                cols = ["-" if getattr(u, c) is None else f"{getattr(u, c):.4g}" for c in ("M", "S", "I")]
                text = " ".join(u.text.split())
                text = text if len(text) <= 44 else text[:41] + "..."
                rng = f"{u.token_range[0]}-{u.token_range[1] - 1}"
                score = f"{u.score:.4g}" if u.scored else f"({u.score:.4g})"
                print(f"{u.rank:>4}{'*' if u.refined else ' '} {rng:>11}  {text:<44} {score:>10} {cols[0]:>8} "
                      f"{cols[1]:>10} {cols[2]:>10}")
            if not r.topk(1):  # no refined tokens: the units are the result
                print("timings: " + ", ".join(f"{k}={v:.2f}s" for k, v in r.timings.items()))
                print()
                continue
            print("refined tokens (* units):")
        print(f"{'pos':>4}  {'token':<16} {'score':>10} {'M':>8} {'S':>10} {'I':>10}")
        for i, tok, v in r.topk(args.top):
            cols = [f"{getattr(r, c)[i]:.4g}" if getattr(r, c) is not None and getattr(r, c)[i] is not None else "-"
                    for c in ("M", "S", "I")]
            print(f"{i:>4}  {tok!r:<16} {v:>10.4g} {cols[0]:>8} {cols[1]:>10} {cols[2]:>10}")
        print("timings: " + ", ".join(f"{k}={v:.2f}s" for k, v in r.timings.items()))
        print()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HetaError as e:
        print(f"heta-fast: error: {e}", file=sys.stderr)
        return 2


def _attribute_command(args) -> int:
    from .tokenizers import check_text

    if not args.text.strip():  # fail before loading the model
        raise HetaInputError("empty text: there is nothing to explain")
    check_text(args.text)
    options_from_preset(args.preset, **overrides_from_args(args))  # bad options fail before loading, too
    shard = ctx = None
    if args.split_work:
        from .batch.distributed import setup
        from .sharding import Shard

        ctx = setup()
        shard = Shard(rank=ctx.rank, world_size=ctx.world_size)
        if not ctx.is_main:  # the other ranks compute their share and say nothing
            args.quiet, args.json, args.html, args.report, args.plot = True, None, None, None, None
    try:
        return _attribute_run(args, shard, ctx)
    finally:
        if ctx is not None:
            ctx.close()


def _attribute_run(args, shard, ctx) -> int:
    from .api import Attributor

    # A split run puts the model on the rank's device (cuda:LOCAL_RANK under NCCL: the ranks sum device tensors).
    where = {} if ctx is None else {"device": str(ctx.device)}
    attributor = Attributor.from_pretrained(args.model, preset=args.preset, progress=not args.quiet, shard=shard,
                                            **where)
    if args.plan:
        plan = attributor.plan(args.text, _target(args.target), generate=args.generate, **overrides_from_args(args))
        print(plan.summary())
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(plan.to_dict(), f, indent=2)
            print(f"wrote {args.json}")
        return 0 if plan.fits else 2
    prof = None
    if args.profile or args.profile_trace:
        from .profiling import profile_attribution

        prof = profile_attribution(attributor, args.text, _target(args.target), trace=args.profile_trace,
                                   generate=args.generate, **overrides_from_args(args))
        res = prof.result
    else:
        res = attributor.attribute(args.text, _target(args.target), generate=args.generate, **overrides_from_args(args))
    if ctx is not None and not ctx.is_main:
        return 0
    _print_result(res, args)
    if prof is not None:
        print(prof.summary())
    if args.report or args.plot:
        from .report import plot_scores, write_report

        if args.report:
            write_report(res, args.report)
            print(f"wrote {args.report}")
        if args.plot:
            plot_scores(res, args.plot)
            print(f"wrote {args.plot}")
    if args.json:
        res.to_json(args.json)
        print(f"wrote {args.json}")
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(res.to_html(by=args.by))
        print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
