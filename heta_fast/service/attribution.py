"""Checking, queueing and running attribution requests on one model: :class:`AttributionService`.

Every check of a request runs in :meth:`AttributionService.prepare`, before the request waits for the model:
input, options (by :class:`~heta_fast.HetaOptions`), what the model has (layers, vocabulary, kv heads), the
memory budget, and the operator's limits (:mod:`.limits`). :meth:`~AttributionService.admit` and
:meth:`~AttributionService.run` then queue it behind the model's lock and run it with a time limit and a
cancellation event, both checked between chunks of work. Errors name the request field they are about.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from .. import __version__
from ..api import target_position
from ..errors import HetaCancelled, HetaInputError, MemoryBudgetError
from ..options import OPTION_NAMES, PRESETS, HetaOptions, options_from_preset, resolve_layers
from ..plan import CostPlan, resolve_max_memory
from ..result import SCHEMA_VERSION
from ..tokenizers import check_text
from .errors import ClientGone, FieldError, ServiceBusy
from .limits import REFERENCE_MAX_TOKENS, ServiceLimits, WorkEstimate

REQUEST_FIELDS = ("text", "ids", "target", "generate", "preset")


@dataclass
class Job:
    """A request that passed every check, ready to run."""

    source: str | list[int]
    target: int | str | None
    generate: int | None
    preset: str | None
    options: dict
    resolved: HetaOptions
    work: WorkEstimate
    cost_field: str  # the request field that drives the cost most (named when a limit stops it)
    plan: CostPlan | None = None  # the engine's plan of the run (passes, memory; no seconds)


class Ticket:
    """A place among the requests admitted to the model (running or waiting); released exactly once."""

    def __init__(self, service: AttributionService):
        self._service = service
        self._released = False

    def release(self) -> None:
        with self._service._count_lock:
            if not self._released:
                self._released = True
                self._service._active -= 1


class AttributionService:
    """One :class:`~heta_fast.Attributor` behind a lock, with request checks that name the bad field.

    Args:
        attributor: the loaded model.
        limits: what one request may cost (:class:`ServiceLimits`); keyword overrides of its fields
            (``max_tokens=64``) are applied on top.
    """

    def __init__(self, attributor, limits: ServiceLimits | None = None, **limit_overrides):
        self.attributor = attributor
        self.limits = replace(limits or ServiceLimits(), **limit_overrides)
        self._lock = threading.Lock()  # the model
        self._count_lock = threading.RLock()
        self._active = 0  # admitted requests: the running one and those waiting
        self._mean_seconds = 1.0  # running mean of a request's time on the model (for Retry-After)
        self.stats: Counter = Counter()
        # The largest max_memory a request may ask for: the operator's cap, or the model's own option with "auto"
        # resolved once, at start (free memory moves under load; one request's checks must see one budget).
        self.budget: int = self.limits.max_memory or resolve_max_memory(self.attributor.options.max_memory,
                                                                        self.attributor.adapter.device)

    @property
    def model_name(self) -> str:
        return self.attributor.name

    # ------------------------------------------------------------------------------------ checks
    def check_options(self, preset: str | None, options: dict[str, Any]) -> HetaOptions:
        """Build the options the attribution will use, naming the offending field on error."""
        if preset is not None and preset not in PRESETS:
            raise FieldError("preset", f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        try:
            if preset is not None:
                return options_from_preset(preset, **options)
            return self.attributor.options.replace(**options)
        except HetaInputError as e:
            raise FieldError(_option_field(e), str(e)) from e

    def _check_option_limits(self, opts: HetaOptions) -> None:
        lim, adapter = self.limits, self.attributor.adapter
        if opts.engine == "reference" and not lim.allow_reference_engine:
            raise FieldError("options.engine", "engine='reference' (the float64 oracle) is off on this server "
                             "(the operator can allow it with --allow-reference-engine)")
        over = [("num_probes", opts.num_probes, lim.max_probes, "--max-probes"),
                ("rank", opts.rank, lim.max_rank, "--max-rank"),
                ("max_memory", opts.max_memory, self.budget, "--max-memory")]
        for name, value, cap, flag in over:
            if value > cap:
                raise FieldError(f"options.{name}", f"{name}={value} is over this server's limit of {cap} ({flag})",
                                 status=413)
        try:
            resolve_layers(opts.layers, adapter.num_layers)
        except HetaInputError as e:
            raise FieldError("options.layers", str(e)) from e
        for name in ("sink_token", "mask_token_id"):
            value = getattr(opts, name)
            if isinstance(value, int) and value >= adapter.vocab_size:
                raise FieldError(f"options.{name}", f"{name} {value} is outside the model vocabulary "
                                 f"(size {adapter.vocab_size})")
        if opts.rollout == "reference" and "M" in opts.components and adapter.num_kv_heads != adapter.num_heads:
            raise FieldError("options.rollout", f"rollout='reference' needs H_kv = H; this model has "
                             f"{adapter.num_kv_heads} kv heads for {adapter.num_heads} query heads; use rollout='flow'")

    def _count(self, text: str, **kw) -> int:
        tok = self.attributor.tokenizer
        if tok is None:
            raise FieldError("text", "this model has no tokenizer; send token ids instead")
        return len(tok(text, **kw)["input_ids"])

    def prepare(self, *, text: str | None = None, ids: list[int] | None = None, target=None,
                generate: int | None = None, preset: str | None = None, options: dict | None = None) -> Job:
        """Every check of a request, before any model call: input, options, model fit, limits, estimated work.

        Raises:
            FieldError: naming the request field (``"options.layers"``) with status 422 or 413.
        """
        lim, vocab = self.limits, self.attributor.adapter.vocab_size
        options = dict(options or {})
        if (text is None) == (ids is None):
            raise FieldError("text", "give exactly one of text or ids")
        src_field = "text" if text is not None else "ids"
        if text is not None:
            if not text.strip():
                raise FieldError("text", "text is empty: there is nothing to explain")
            _checked_text(text, "text")
        else:
            if not ids:
                raise FieldError("ids", "ids is empty: there is nothing to explain")
            if len(ids) > lim.max_tokens:
                raise _too_many_tokens("ids", len(ids), lim.max_tokens)
            bad = next((i for i, x in enumerate(ids) if not 0 <= x < vocab), None)
            if bad is not None:
                raise FieldError("ids", f"token id {ids[bad]} at position {bad} is outside the model vocabulary "
                                 f"(size {vocab})")
        if generate is not None:
            if target is not None:
                raise FieldError("generate", "give either target or generate, not both")
            if generate > lim.max_generate:
                raise FieldError("generate", f"generate={generate} is over this server's limit of "
                                 f"{lim.max_generate} tokens (--max-generate)", status=413)
        if isinstance(target, str):
            if not target:
                raise FieldError("target", "target is an empty string; give a continuation, a position, or omit it")
            _checked_text(target, "target")
        opts = self.check_options(preset, options)
        if opts.max_memory == "auto":  # the server's budget, fixed at start, so the plan and the run use the same
            options["max_memory"] = self.budget
            opts = opts.replace(max_memory=self.budget)
        self._check_option_limits(opts)

        n_prompt = self._count(text) if text is not None else len(ids)
        n_cont = self._count(target, add_special_tokens=False) if isinstance(target, str) else 0
        if isinstance(target, str) and n_cont == 0:
            raise FieldError("target", f"the continuation {target!r} has no tokens")
        n_total = n_prompt + n_cont + (generate or 0)
        if n_total > lim.max_tokens:
            raise _too_many_tokens(src_field, n_total, lim.max_tokens)
        if opts.engine == "reference" and n_total > REFERENCE_MAX_TOKENS:
            raise FieldError("options.engine", f"engine='reference' is the slow float64 oracle; this server "
                             f"allows it for inputs of at most {REFERENCE_MAX_TOKENS} tokens", status=413)
        # Positions as the library numbers them: special tokens in front (a BOS) are the sink, not positions.
        n_context = len(self.attributor.tokenize(text if text is not None else ids, special_tokens=opts.special_tokens))
        self._positions(n_context, n_cont, target, generate, src_field)  # the library's target errors, early

        # The engine's own plan: windows, levels, units, passes and memory by the rules the run will follow (and
        # the library's errors about spans or units, named by their request field, before any model call).
        try:
            plan = self.attributor.plan(text if text is not None else ids, target, generate=generate, preset=preset,
                                        seconds=False, **options)
        except HetaInputError as e:
            raise FieldError(_input_field(e, text is not None), str(e)) from e
        if plan.windows > lim.max_windows:
            raise FieldError("options.window", f"window={opts.window}, overlap={opts.overlap} make {plan.windows} "
                             f"windows; this server allows at most {lim.max_windows} (--max-windows)", status=413)
        if not plan.fits:
            raise FieldError("options.max_memory", plan.problem, status=413)
        work = WorkEstimate(plan.work_parts())
        cost_field = _cost_field(work, opts, src_field)
        if work.total > lim.max_work:
            raise FieldError(cost_field, f"this request needs about {work.total:,.0f} token passes ({work.summary()}), "
                             f"over this server's limit of {lim.max_work:,} (--max-work); ask for less: "
                             f"{_cheaper(cost_field)}", status=413)
        return Job(source=text if text is not None else list(ids), target=target, generate=generate, preset=preset,
                   options=options, resolved=opts, work=work, cost_field=cost_field, plan=plan)

    @staticmethod
    def _positions(n_context: int, n_cont: int, target, generate: int | None, src_field: str) -> list[int]:
        """The target positions (= context lengths) a request explains; the library's target checks, early."""
        if generate is not None:
            return list(range(n_context, n_context + generate))
        if isinstance(target, str):
            return list(range(n_context, n_context + n_cont))
        try:
            return [target_position(n_context, target)]
        except HetaInputError as e:
            raise FieldError(_input_field(e, src_field == "text"), str(e)) from e

    # ------------------------------------------------------------------------------------ queue
    def admit(self) -> Ticket:
        """A place in the queue, or :class:`ServiceBusy` at once when ``max_queue`` requests already wait."""
        with self._count_lock:
            if self._active > self.limits.max_queue:
                self._note("busy")
                raise ServiceBusy(f"the model is busy and {self._active - 1} requests are already waiting "
                                  f"(--max-queue {self.limits.max_queue}); retry later",
                                  retry_after=self._retry_after())
            self._active += 1
        return Ticket(self)

    def _note(self, outcome: str) -> None:
        with self._count_lock:
            self.stats[outcome] += 1

    def _retry_after(self) -> int:
        """Seconds until the queue has probably moved on: the running mean time per request, times the queue."""
        return max(1, min(3600, math.ceil(self._mean_seconds * max(1, self._active))))

    def run(self, job: Job, ticket: Ticket, cancel: threading.Event | None = None):
        """Wait for the model (at most ``max_wait``), then explain ``job`` within ``time_limit``.

        ``cancel`` set (the client went away) drops the request from the queue or stops it between chunks.
        Always releases ``ticket``.
        """
        lim = self.limits
        try:
            give_up = time.monotonic() + lim.max_wait
            while not self._lock.acquire(timeout=0.05):
                if cancel is not None and cancel.is_set():
                    self._note("disconnected")
                    raise ClientGone("the client disconnected while its request waited for the model")
                if time.monotonic() > give_up:
                    self._note("busy")
                    raise ServiceBusy(f"waited {lim.max_wait:g} s for the model (--max-wait); retry later",
                                      retry_after=self._retry_after())
            try:
                return self._run_locked(job, cancel)
            finally:
                self._lock.release()
        finally:
            ticket.release()

    def _run_locked(self, job: Job, cancel: threading.Event | None):
        start = time.monotonic()
        deadline = start + self.limits.time_limit

        def should_stop() -> bool:
            return (cancel is not None and cancel.is_set()) or time.monotonic() > deadline

        kw = dict(job.options)
        if job.preset is not None:
            kw["preset"] = job.preset
        try:
            res = self.attributor.attribute(job.source, job.target, generate=job.generate, should_stop=should_stop,
                                            **kw)
        except HetaCancelled as e:
            if cancel is not None and cancel.is_set():
                self._note("disconnected")
                raise ClientGone("the client disconnected; its request was stopped") from e
            self._note("time_limit")
            raise FieldError(job.cost_field, f"stopped after {time.monotonic() - start:.1f} s: this server allows "
                             f"{self.limits.time_limit:g} s per request (--time-limit); ask for less: "
                             f"{_cheaper(job.cost_field)}", status=413) from e
        except MemoryBudgetError as e:
            raise FieldError("options.max_memory", str(e), status=413) from e
        except HetaInputError as e:
            raise FieldError(_input_field(e, isinstance(job.source, str)), str(e)) from e
        finally:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.monotonic() - start)
        self._note("served")
        return res

    def attribute(self, *, cancel: threading.Event | None = None, **request):
        """Check, queue and run one request (``text``/``ids``, ``target``, ``generate``, ``preset``, ``options``).

        Returns:
            An :class:`~heta_fast.Attribution` or :class:`~heta_fast.AttributionSequence`.

        Raises:
            FieldError: bad input or over a limit (the field is named); ServiceBusy: the queue is full;
            ClientGone: ``cancel`` was set.
        """
        job = self.prepare(**request)
        return self.run(job, self.admit(), cancel)

    def tokenize(self, text: str) -> list[dict]:
        """Tokens of ``text`` numbered as the attributor numbers target positions:
        ``[{"position", "id", "token"}, ...]`` (a BOS the tokenizer adds is the sink, not a position)."""
        if self.attributor.tokenizer is None:
            raise FieldError("text", "this model has no tokenizer; send token ids instead")
        _checked_text(text, "text")
        try:
            tokens = self.attributor.tokenize(text)
        except HetaInputError as e:
            raise FieldError("text", str(e)) from e
        if len(tokens) > self.limits.max_tokens:
            raise _too_many_tokens("text", len(tokens), self.limits.max_tokens)
        return [{"position": i, "id": tid, "token": shown} for i, tid, shown in tokens]

    def health(self) -> dict:
        with self._count_lock:
            active = self._active
        return {
            "status": "ok",
            "model": self.model_name,
            "schema_version": SCHEMA_VERSION,
            "heta_fast": __version__,
            "max_tokens": self.limits.max_tokens,
            "limits": {**self.limits.to_dict(), "max_memory": self.budget},
            "queue": {"running": int(self._lock.locked()), "admitted": active},
            "requests": dict(self.stats),
            "options": self.attributor.options.to_dict(),
        }


# ------------------------------------------------------------------------------------ field names
def _checked_text(text: str, field: str) -> None:
    try:
        check_text(text, field)
    except HetaInputError as e:
        raise FieldError(field, str(e)) from e


def _too_many_tokens(field: str, n: int, cap: int) -> FieldError:
    return FieldError(field, f"the input has {n} tokens; this server accepts at most {cap} "
                      "(start it with a larger --max-tokens)", status=413)


def _option_field(e: HetaInputError) -> str:
    """``options.<name>`` for an options error (the library names the option in ``e.field``)."""
    if e.field == "preset":
        return "preset"
    return f"options.{e.field}" if e.field in OPTION_NAMES else "options"


def _input_field(e: HetaInputError, has_text: bool) -> str:
    """Which request field an input error from :meth:`Attributor.attribute` is about."""
    if e.field in OPTION_NAMES:
        return f"options.{e.field}"
    if e.field in REQUEST_FIELDS:
        return e.field
    m = str(e).lower()
    if "generate" in m:
        return "generate"
    if "target" in m or "continuation" in m:
        return "target"
    if "token id" in m:
        return "ids"
    return "text" if has_text else "ids"


def _cost_field(work: WorkEstimate, opts: HetaOptions, src_field: str) -> str:
    """The request field that drives the cost most: probes or rank for S, generated tokens, or the input."""
    stage = work.dominant()
    if stage == "S":
        return "options.num_probes" if opts.hessian == "exact" else "options.rank"
    if stage == "generate":
        return "generate"
    return src_field


def _cheaper(field: str) -> str:
    return {
        "options.num_probes": "fewer num_probes, hessian='lowrank' with a small rank, layers=6, or a shorter input",
        "options.rank": "a smaller rank, layers=6, or a shorter input",
        "generate": "fewer generated tokens",
    }.get(field, "a shorter input, or a window (options.window) for long inputs, or fewer components")
