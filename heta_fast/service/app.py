"""The JSON service: ``POST /attribute`` returns ``Attribution.to_dict()`` (schema ``schema_version`` 1.x).

Request body (every field but ``text``/``ids`` optional)::

    {"text": "The capital of France is Paris",   # or "ids": [1, 504, 3575, 282]
     "target": 5,               # int: a position (negative from the end); string: a continuation; omitted: last token
     "generate": 3,             # instead of target: greedy-generate N tokens and explain each
     "preset": "fast",          # start from a preset instead of the server's options
     "options": {"num_probes": 4, "hessian": "lowrank", "rank": 16}}   # any HetaOptions field

Response: one ``Attribution.to_dict()`` for a single target, or ``{"schema_version", "targets": [...]}``
for a continuation or a generation. Errors are 4xx with FastAPI's shape plus a one-line summary::

    {"error": "options.num_probes: num_probes must be >= 1, got 0",
     "detail": [{"loc": ["body", "options", "num_probes"], "msg": "...", "type": "value_error"}]}

One model serves every request, one request at a time: the model is not thread-safe while heta_fast
records its attention, so requests wait on a lock (at most ``max_queue`` of them; more get 503).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import HetaError, HetaInputError, MemoryBudgetError
from ..options import PRESETS, HetaOptions, options_from_preset
from ..result import SCHEMA_VERSION

MAX_GENERATE = 64
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(HetaOptions) if f.name != "extra")


class FieldError(HetaInputError):
    """Bad input, with the request field it concerns (``"options.num_probes"``) and the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


class ServiceBusy(HetaError):
    """Too many requests are already waiting for the model."""


# ------------------------------------------------------------------------------------------ schema
class AttributeOptions(BaseModel):
    """Every :class:`~heta_fast.HetaOptions` field; unknown names are rejected (422 naming the field).

    Defaults are ``None`` only as "not given" markers: ``model_dump(exclude_unset=True)`` passes just the
    fields the client sent, and an explicit ``null`` is checked against the real type.
    """

    model_config = ConfigDict(extra="forbid")

    beta: float = None
    gamma: float = None
    num_probes: int = None
    seed: int = None
    rollout: Literal["flow", "reference"] = None
    hessian: Literal["exact", "lowrank"] = None
    rank: int = None
    curvature: Literal["hessian", "gauss_newton"] = None
    layers: int | Literal["auto"] | None = None
    mask: Literal["zero", "mean", "token"] = None
    mask_token_id: int | None = None
    normalize: Literal["none", "sum"] = None
    components: list[Literal["M", "S", "I"]] = None
    window: int | None = None
    overlap: float = None
    sink_token: int | Literal["auto"] | None = None
    engine: Literal["fast", "reference"] = None
    max_memory: int = None
    lowrank_passes: Literal[1, 2] = None
    units: Literal["token", "sentence", "paragraph", "spans"] = None
    spans: list[tuple[int, int]] | None = None
    refine: int | None = None


class AttributeRequest(BaseModel):
    """Body of ``POST /attribute`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="input text (needs the model's tokenizer)")
    ids: list[int] | None = Field(None, description="input token ids, instead of text")
    target: int | str | None = Field(
        None, description="position (int, negative from the end), continuation (string), or omitted: last token"
    )
    generate: int | None = Field(None, ge=1, le=MAX_GENERATE, description="greedy-generate N tokens, explain each")
    preset: str | None = Field(None, description=f"one of {', '.join(PRESETS)}")
    options: AttributeOptions = Field(default_factory=AttributeOptions)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


# ----------------------------------------------------------------------------------------- service
def _option_in_message(message: str) -> str | None:
    """The option a :class:`HetaOptions` validation message is about (they start with its name)."""
    head = message.split(" ", 1)[0].split("=", 1)[0]
    if head in OPTION_NAMES:
        return head
    # e.g. "mask='token' needs mask_token_id": name the option the client has to add.
    found = [n for n in OPTION_NAMES if n in message]
    return max(found, key=len) if found else None


def _input_field(message: str, has_text: bool) -> str:
    """Which request field an input error from :meth:`Attributor.attribute` is about."""
    m = message.lower()
    if "generate" in m:
        return "generate"
    if "target" in m or "continuation" in m:
        return "target"
    if "token id" in m:
        return "ids"
    return "text" if has_text else "ids"


class AttributionService:
    """One :class:`~heta_fast.Attributor` behind a lock, with request checks that name the bad field.

    Args:
        attributor: the loaded model.
        max_tokens: longest input (prompt + continuation or generated tokens) accepted; a CPU server
            would otherwise be tied up for hours by one long request.
        max_queue: requests allowed to wait for the model at once; more are refused with 503.
    """

    def __init__(self, attributor, *, max_tokens: int = 1024, max_queue: int = 16):
        self.attributor = attributor
        self.max_tokens = max_tokens
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._waiting = 0
        self._count_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.attributor.name

    def run_exclusive(self, fn, *args, **kwargs):
        """Call ``fn`` while holding the model; raises :class:`ServiceBusy` when the queue is full."""
        with self._count_lock:
            if self._waiting >= self.max_queue:
                raise ServiceBusy(f"{self._waiting} requests are already waiting for the model; retry later")
            self._waiting += 1
        try:
            with self._lock:
                return fn(*args, **kwargs)
        finally:
            with self._count_lock:
                self._waiting -= 1

    def tokenize(self, text: str) -> list[dict]:
        """Tokens of ``text`` as the attributor encodes them: ``[{"position", "id", "token"}, ...]``."""
        tok = self.attributor.tokenizer
        if tok is None:
            raise FieldError("text", "this model has no tokenizer; send token ids instead")
        enc = tok(text, return_offsets_mapping=True)
        out = []
        for i, (tid, (s, e)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            shown = text[s:e] if e > s else tok.decode([tid])
            out.append({"position": i, "id": int(tid), "token": shown})
        return out

    def check_options(self, preset: str | None, options: dict[str, Any]) -> HetaOptions:
        """Build the options the attribution will use, naming the offending field on error."""
        if preset is not None and preset not in PRESETS:
            raise FieldError("preset", f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        try:
            if preset is not None:
                return options_from_preset(preset, **options)
            return self.attributor.options.replace(**options)
        except HetaInputError as e:
            name = _option_in_message(str(e))
            raise FieldError(f"options.{name}" if name else "options", str(e)) from e

    def _count_tokens(self, text, ids, target, generate) -> int | None:
        tok = self.attributor.tokenizer
        if ids is not None:
            n = len(ids)
        elif tok is not None:
            n = len(tok(text)["input_ids"])
        else:
            return None
        if isinstance(target, str) and tok is not None:
            n += len(tok(target, add_special_tokens=False)["input_ids"])
        return n + (generate or 0)

    def attribute(self, *, text: str | None = None, ids: list[int] | None = None, target=None,
                  generate: int | None = None, preset: str | None = None, options: dict | None = None):
        """Validate, then run :meth:`Attributor.attribute` holding the model.

        Returns:
            An :class:`~heta_fast.Attribution` or :class:`~heta_fast.AttributionSequence`.

        Raises:
            FieldError: bad input (the field is named); ServiceBusy: the queue is full.
        """
        options = dict(options or {})
        if options.get("components") is not None:
            options["components"] = tuple(options["components"])
        if (text is None) == (ids is None):
            raise FieldError("text", "give exactly one of text or ids")
        if text is not None and not text.strip():
            raise FieldError("text", "text is empty: there is nothing to explain")
        if ids is not None and not ids:
            raise FieldError("ids", "ids is empty: there is nothing to explain")
        if generate is not None and target is not None:
            raise FieldError("generate", "give either target or generate, not both")
        if isinstance(target, str) and not target:
            raise FieldError("target", "target is an empty string; give a continuation, a position, or omit it")
        opts = self.check_options(preset, options)
        n = self._count_tokens(text, ids, target, generate)
        if n is not None and n > self.max_tokens:
            raise FieldError("ids" if ids is not None else "text",
                             f"the input has {n} tokens; this server accepts at most {self.max_tokens} "
                             "(start it with a larger --max-tokens)", status=413)
        if opts.engine == "reference" and n is not None and n > 64:
            raise FieldError("options.engine", "engine='reference' is the slow float64 oracle; "
                             "this server allows it for inputs of at most 64 tokens")

        def run():
            kw = dict(options)
            if preset is not None:
                kw["preset"] = preset
            return self.attributor.attribute(text if text is not None else ids, target, generate=generate, **kw)

        try:
            return self.run_exclusive(run)
        except MemoryBudgetError as e:
            raise FieldError("options.max_memory", str(e), status=413) from e
        except FieldError:
            raise
        except HetaInputError as e:
            raise FieldError(_input_field(str(e), text is not None), str(e)) from e


# --------------------------------------------------------------------------------------------- app
def _error_response(status: int, field: str, message: str, kind: str = "value_error") -> JSONResponse:
    loc = ["body", *field.split(".")] if field else ["body"]
    return JSONResponse(
        status_code=status,
        content={"error": f"{field}: {message}" if field else message,
                 "detail": [{"loc": loc, "msg": message, "type": kind}]},
    )


def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body plus a one-line ``error`` that names the field (and the valid option names)."""
    errors = []
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(p for p in loc if p != "body")
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            if loc[:2] == ["body", "options"]:
                msg = f"unknown option {loc[-1]!r}; valid options: {', '.join(OPTION_NAMES)}"
            else:
                msg = f"unknown field {loc[-1]!r}; valid fields: {', '.join(AttributeRequest.model_fields)}"
        errors.append({"loc": loc, "msg": msg, "type": err.get("type", "value_error")})
        lines.append(f"{field}: {msg}" if field else msg)
    return JSONResponse(status_code=422, content={"error": "; ".join(lines), "detail": errors})


def create_app(service: AttributionService, *, demo: bool = False) -> FastAPI:
    """The FastAPI app around one :class:`AttributionService`.

    Args:
        service: the model and its lock (build it with ``AttributionService(Attributor(...))``).
        demo: also mount the Gradio demo at ``/demo`` (and redirect ``/`` there).
    """
    app = FastAPI(
        title="heta_fast",
        version=__version__,
        description="HETA token attributions for a causal LM. POST /attribute returns the "
                    f"Attribution schema (schema_version {SCHEMA_VERSION}).",
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _validation_handler)

    @app.exception_handler(FieldError)
    def _field_error(request: Request, exc: FieldError):
        return _error_response(exc.status, exc.field, str(exc))

    @app.exception_handler(ServiceBusy)
    def _busy(request: Request, exc: ServiceBusy):
        return _error_response(503, "", str(exc), kind="busy")

    @app.exception_handler(HetaError)
    def _heta_error(request: Request, exc: HetaError):
        # NumericalError / UnsupportedModelError: the model, not the request, is at fault.
        return _error_response(500, "", f"{type(exc).__name__}: {exc}", kind="model_error")

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "model": service.model_name,
            "schema_version": SCHEMA_VERSION,
            "heta_fast": __version__,
            "max_tokens": service.max_tokens,
            "options": service.attributor.options.to_dict(),
        }

    # Plain ``def`` endpoints run in FastAPI's thread pool; the service lock serialises model use.
    @app.post("/attribute")
    def attribute(req: AttributeRequest) -> JSONResponse:
        res = service.attribute(
            text=req.text, ids=req.ids, target=req.target, generate=req.generate, preset=req.preset,
            options=req.options.model_dump(exclude_unset=True),
        )
        return JSONResponse(res.to_dict())

    @app.post("/tokenize")
    def tokenize(req: TokenizeRequest) -> dict:
        return {"tokens": service.tokenize(req.text)}

    if demo:
        import gradio as gr

        from .demo import DEMO_CSS, build_demo

        @app.get("/", include_in_schema=False)
        def index():
            return RedirectResponse("/demo/")

        app = gr.mount_gradio_app(app, build_demo(service), path="/demo", footer_links=["api"], css=DEMO_CSS,
                                  theme=_demo_theme())
    else:
        @app.get("/")
        def index_json() -> dict:
            return {"service": "heta_fast", "endpoints": ["GET /health", "POST /attribute", "POST /tokenize",
                                                         "GET /docs"]}
    return app


def _demo_theme():
    import gradio as gr

    # System fonts only: the default theme fetches Google Fonts, which offline machines cannot reach.
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
