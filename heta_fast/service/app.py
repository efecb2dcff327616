"""The JSON service: ``POST /attribute`` returns ``Attribution.to_dict()`` (schema ``schema_version`` 1.x).

Request body (every field but ``text``/``ids`` optional)::

    {"text": "The capital of France is Paris",   # or "ids": [1, 504, 3575, 282]
     "target": 5,               # int: a position (negative from the end); string: a continuation; omitted: last token
     "generate": 3,             # instead of target: greedy-generate N tokens and explain each
     "preset": "fast",          # start from a preset instead of the server's options
     "options": {"num_probes": 4, "hessian": "lowrank", "rank": 16}}   # any HetaOptions field

Response: one ``Attribution.to_dict()`` for a single target, or ``{"schema_version", "targets": [...]}``
for a continuation or a generation. Errors name the request field they are about::

    {"error": "options.num_probes: num_probes must be an integer >= 1, got 0",
     "detail": [{"loc": ["body", "options", "num_probes"], "msg": "...", "type": "value_error"}]}

422: a value the library refuses; 413: over one of the operator's limits (:class:`ServiceLimits`: tokens,
probes, rank, windows, generated tokens, estimated work, memory, time); 503 with ``Retry-After``: the queue
is full. Every check runs before the request waits for the model, so a bad request is answered at once.

One model serves every request, one request at a time: the model is not thread-safe while heta_fast
records its attention, so requests wait on a lock. A running request is stopped between chunks of work
when it passes the time limit or its client disconnects (``Attributor.attribute(should_stop=...)``).
"""

from __future__ import annotations

import functools
import threading

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import HetaError
from ..options import OPTION_NAMES
from ..result import SCHEMA_VERSION
from .attribution import AttributionService
from .errors import ClientGone, FieldError, ServiceBusy
from .limits import ServiceLimits
from .schema import AttributeOptions, AttributeRequest, TokenizeRequest

__all__ = ["AttributeOptions", "AttributionService", "ClientGone", "FieldError", "ServiceBusy", "ServiceLimits",
           "create_app"]


# --------------------------------------------------------------------------------------------- app
def _error_response(status: int, field: str, message: str, kind: str = "value_error",
                    headers: dict | None = None) -> JSONResponse:
    loc = ["body", *field.split(".")] if field else ["body"]
    return JSONResponse(
        status_code=status,
        content={"error": f"{field}: {message}" if field else message,
                 "detail": [{"loc": loc, "msg": message, "type": kind}]},
        headers=headers,
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


class BodyLimit:
    """ASGI middleware: a request body over ``max_body`` bytes is refused with 413 before it is parsed."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    def _message(self, n: int | str) -> str:
        return f"the request body is {n} bytes; this server accepts at most {self.max_body} (--max-body)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _error_response(413, "body", self._message(int(length)))(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a chunked body with no Content-Length
                    raise HTTPException(413, self._message(f"more than {self.max_body}"))
            return message

        return await self.app(scope, counted_receive, send)


async def _run_until_disconnect(request: Request, fn, cancel: threading.Event, limiter):
    """``fn()`` in a worker thread while watching the connection: a disconnect sets ``cancel``."""

    async def watch():
        while not cancel.is_set():
            if await request.is_disconnected():
                cancel.set()
                return
            await anyio.sleep(0.1)

    outcome: dict = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            outcome["value"] = await anyio.to_thread.run_sync(fn, limiter=limiter)
        except Exception as e:  # re-raised outside the task group, so it is not wrapped in an ExceptionGroup
            outcome["error"] = e
        tg.cancel_scope.cancel()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def create_app(service: AttributionService, *, demo: bool = False) -> FastAPI:
    """The FastAPI app around one :class:`AttributionService`.

    Args:
        service: the model, its lock and its limits (``AttributionService(Attributor(...), ServiceLimits(...))``).
        demo: also mount the Gradio demo at ``/demo`` (and redirect ``/`` there).
    """
    app = FastAPI(
        title="heta_fast",
        version=__version__,
        description="HETA token attributions for a causal LM. POST /attribute returns the "
                    f"Attribution schema (schema_version {SCHEMA_VERSION}).",
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_body=service.limits.max_body)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    # Threads for model work: the running request plus every waiting one, so admission alone decides who waits.
    model_threads = anyio.CapacityLimiter(service.limits.max_queue + 1)

    @app.exception_handler(FieldError)
    def _field_error(request: Request, exc: FieldError):
        return _error_response(exc.status, exc.field, str(exc))

    @app.exception_handler(ServiceBusy)
    def _busy(request: Request, exc: ServiceBusy):
        return _error_response(503, "", str(exc), kind="busy", headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientGone)
    def _gone(request: Request, exc: ClientGone):
        return _error_response(499, "", str(exc), kind="client_gone")  # nobody reads it; logs show 499

    @app.exception_handler(HTTPException)  # Starlette's: FastAPI's own, 404 and 405 too
    def _http_error(request: Request, exc: HTTPException):
        field = "body" if exc.status_code in (400, 413) else ""
        return _error_response(exc.status_code, field, str(exc.detail), kind="http_error", headers=exc.headers)

    @app.exception_handler(HetaError)
    def _heta_error(request: Request, exc: HetaError):
        # NumericalError / UnsupportedModelError: the model, not the request, is at fault.
        return _error_response(500, "", f"{type(exc).__name__}: {exc}", kind="model_error")

    @app.get("/health")
    async def health() -> dict:  # async: answered by the event loop even when every worker thread is busy
        return service.health()

    @app.post("/attribute")
    async def attribute(req: AttributeRequest, request: Request) -> JSONResponse:
        job = await anyio.to_thread.run_sync(functools.partial(
            service.prepare, text=req.text, ids=req.ids, target=req.target, generate=req.generate,
            preset=req.preset, options=req.options.model_dump(exclude_unset=True)))
        ticket = service.admit()
        cancel = threading.Event()
        try:
            res = await _run_until_disconnect(request, functools.partial(service.run, job, ticket, cancel), cancel,
                                              model_threads)
        finally:
            ticket.release()
        return JSONResponse(res.to_dict())

    @app.post("/plan")
    async def plan(req: AttributeRequest) -> dict:
        """What /attribute would do with this request, after every check it makes, without running it."""
        job = await anyio.to_thread.run_sync(functools.partial(
            service.prepare, text=req.text, ids=req.ids, target=req.target, generate=req.generate,
            preset=req.preset, options=req.options.model_dump(exclude_unset=True)))
        return {**job.plan.to_dict(), "work": job.work.total, "max_work": service.limits.max_work}

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
            return {"service": "heta_fast", "endpoints": ["GET /health", "POST /attribute", "POST /plan", "POST /tokenize",
                                                         "GET /docs"]}
    return app


def _demo_theme():
    import gradio as gr

    # System fonts only: the default theme fetches Google Fonts, which offline machines cannot reach.
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
