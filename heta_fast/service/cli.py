"""``heta-fast serve`` (JSON service) and ``heta-fast demo`` (the same service plus the Gradio page)."""

from __future__ import annotations

import argparse

from ..options import PRESETS
from .limits import add_limit_flags, limits_from_args


def load_attributor(model: str = "default", tiny_model: str | None = None, preset: str = "default"):
    """The Attributor a server uses: ``model`` (default or a local HF folder) or a tiny random model."""
    from ..api import Attributor
    from ..options import options_from_preset

    if tiny_model:
        from ..models import tiny_model as make_tiny
        from ..tokenizers import CharTokenizer

        return Attributor(make_tiny(tiny_model), CharTokenizer(), options=options_from_preset(preset),
                          name=f"tiny-{tiny_model}")
    return Attributor.from_pretrained(model, preset=preset)


def _add_common(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=default_port)
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m' (Gemma-3-270M) or a local HF folder")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="the server's default options")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_limit_flags(p)
    # Tests and smoke runs: a tiny random-weight model with a character tokenizer, no model files needed.
    p.add_argument("--tiny-model", metavar="ARCH", help=argparse.SUPPRESS)


def add_parser(sub) -> None:
    """Register ``serve`` and ``demo`` on the ``heta-fast`` sub-command parser."""
    s = sub.add_parser("serve", help="JSON service: POST /attribute, GET /health (one model, one request at a time)")
    _add_common(s, 8000)
    s.set_defaults(func=lambda args: _run(args, demo=False))
    d = sub.add_parser("demo", help="web demo (Gradio) at /demo, plus the JSON service on the same port")
    _add_common(d, 7860)
    d.set_defaults(func=lambda args: _run(args, demo=True))


def _run(args, *, demo: bool) -> int:
    import uvicorn

    from .app import AttributionService, create_app

    limits = limits_from_args(args)  # bad limits fail before the model loads
    attributor = load_attributor(args.model, args.tiny_model, args.preset)
    service = AttributionService(attributor, limits)
    app = create_app(service, demo=demo)
    where = f"http://{args.host}:{args.port}"
    print(f"heta-fast: serving {attributor.name} at {where}" + (f" (demo: {where}/demo/)" if demo else ""), flush=True)
    # One worker process: the model is loaded once; requests are serialised by the service lock.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0
