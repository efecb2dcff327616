"""``heta-fast batch IN.jsonl OUT.jsonl``: the resumable, multi-process batch job from the command line.

Also runnable as ``python -m heta_fast.batch IN OUT ...``, which is what ``torchrun`` launches::

    torchrun --nproc_per_node 4 -m heta_fast.batch data.jsonl out.jsonl --preset fast
"""

from __future__ import annotations

import argparse
import sys

from ..errors import HetaError
from ..options import PRESETS, add_option_flags, options_from_preset, overrides_from_args
from ..tokenizers import CharTokenizer


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "input",
        metavar="IN.jsonl",
        help='one record per line: {"id"?, "text" | "ids", "target"?, "generate"?, option overrides?, "meta"?}',
    )
    p.add_argument(
        "output", metavar="OUT.jsonl", help="results, one line per record (errors go to OUT's stem + .errors.jsonl)"
    )
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m' (Gemma-3-270M) or a local HF folder")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    add_option_flags(p)
    p.add_argument(
        "--device", default="auto", help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda, cuda:N"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--retry-errors", action="store_true", help="redo the records listed in the errors file")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in OUT and start again")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="record unexpected per-record failures in the errors file instead of stopping",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=7 * 24 * 60,
        metavar="MINUTES",
        help="how long ranks wait for each other (the slowest shard) before the merge",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # Hidden: a tiny random-weight model with a character tokenizer, so tests run offline and fast.
    p.add_argument("--tiny-model", help=argparse.SUPPRESS)
    p.set_defaults(func=batch_command)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``heta-fast batch`` (called by :mod:`heta_fast.cli`)."""
    p = subparsers.add_parser(
        "batch",
        help="explain every record of a JSONL file (resumable; multi-process with torchrun)",
        description="Explain every record of IN.jsonl into OUT.jsonl. Each result is appended and fsync'd as "
        "soon as it is finished; running the same command again after a crash or Ctrl-C skips finished "
        "records. Under torchrun, records are sharded over the ranks and merged into OUT in input order.",
    )
    return _configure(p)


def make_factory(args):
    """``factory(device) -> Attributor`` for the model and options on the command line."""
    import torch

    from ..api import Attributor

    dtype = getattr(torch, args.dtype)
    overrides = overrides_from_args(args)
    options_from_preset(args.preset, **overrides)  # bad options fail before any model is loaded

    def factory(device):
        if args.tiny_model:
            from ..models import tiny_model

            model = tiny_model(args.tiny_model).to(device=device, dtype=dtype)
            return Attributor(
                model,
                CharTokenizer(),
                options=options_from_preset(args.preset, **overrides),
                name=f"tiny-{args.tiny_model}",
            )
        return Attributor.from_pretrained(args.model, dtype=dtype, device=str(device), preset=args.preset, **overrides)

    return factory


def batch_command(args) -> int:
    """Run the job; exit 0 when every record is in OUT or its errors file, 130 when interrupted."""
    from .distributed import setup
    from .jobs import errors_path, run_batch

    ctx = setup(device=args.device, timeout_minutes=args.dist_timeout)
    try:
        summary = run_batch(
            make_factory(args),
            args.input,
            args.output,
            ctx=ctx,
            retry_errors=args.retry_errors,
            overwrite=args.overwrite,
            keep_going=args.keep_going,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        if ctx.is_main:
            print("heta-fast batch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        ctx.close()
    if ctx.is_main:
        if summary.interrupted:
            print("heta-fast batch: interrupted; run the same command again to resume", file=sys.stderr)
            return 130
        msg = (
            f"{args.output}: {summary.results} results ({summary.new_results} new, {summary.skipped} records "
            f"finished earlier)"
        )
        if summary.errors:
            msg += f"; {summary.errors} failed records in {errors_path(args.output)}"
        print(msg, file=sys.stderr)
    return 130 if summary.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m heta_fast.batch IN OUT [options]``."""
    parser = _configure(argparse.ArgumentParser(prog="python -m heta_fast.batch", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HetaError as e:
        print(f"heta-fast batch: error: {e}", file=sys.stderr)
        return 2
