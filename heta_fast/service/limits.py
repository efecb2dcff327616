"""What one request may cost on this server: the operator's limits, and the work a request asks for,
estimated from the request alone before any model call.

The unit of work is a *token pass*: one token through the whole model, forward. One attribution of a
target with context t (per window; W tokens per window when windowed, plus the sink token) costs about

- gate M: t (one recorded forward; the rollout itself is cheap);
- S, exact: 2·m·t²·f (m·t²/2 rows of Hessian-vector products over causal suffixes, ≈ 4 passes each);
- S, lowrank: 8·rank·t·f (2·rank products over the whole context);
- I: t²/2 (one masked suffix per context token);
- generate=g: g forwards of the growing text;

where f is the fraction of layers the curvature runs through (``layers``). Several targets of one text share
the gate and I (one pass for all). The reference engine is counted 4x. Calibration on the default model
(SmolLM2-135M, 2 CPU cores): about 500 token passes a second for S and I alike (``benchmarks/RESULTS.md``:
exact S at t = 64 over the last 6 layers, 16k passes, 29 s; I at t = 128, 8k passes, 20 s).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import HetaInputError
from ..options import HetaOptions, resolve_layers

# The reference engine (float64 loops, a copy of the model) is the oracle, not a serving path.
REFERENCE_FACTOR = 4
REFERENCE_MAX_TOKENS = 64


def _limit(default, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServiceLimits:
    """The limits an operator sets with ``heta-fast serve`` flags (``--max-probes``, ...), shown in /health."""

    max_tokens: int = _limit(1024, "longest input a request may send (prompt plus continuation or generated tokens)")
    max_generate: int = _limit(64, "most tokens one request may generate (generate=N)")
    max_probes: int = _limit(64, "largest options.num_probes")
    max_rank: int = _limit(256, "largest options.rank")
    max_windows: int = _limit(32, "most windows per target (options.window and options.overlap)")
    max_work: int = _limit(50_000, "largest estimated work of one request, in token passes (one token through the "
                           "whole model, forward); the default model on 2 CPU cores does about 500 a second")
    max_memory: int | None = _limit(None, "largest options.max_memory in bytes (default: the server's own "
                                    "max_memory option)")
    allow_reference_engine: bool = _limit(False, "accept options.engine='reference' (a float64 copy of the model, "
                                          f"inputs of at most {REFERENCE_MAX_TOKENS} tokens)")
    time_limit: float = _limit(60.0, "seconds one request may hold the model; then it is stopped between chunks "
                               "of work and answered 413")
    max_queue: int = _limit(16, "requests that may wait while the model is busy; more get 503 at once")
    max_wait: float = _limit(30.0, "seconds a request may wait for the model before it gets 503")
    max_body: int = _limit(1 << 20, "largest request body in bytes")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, bool):
                continue
            if not (math.isfinite(value) and (value >= 0 if f.name == "max_queue" else value > 0)):
                raise HetaInputError(f"--{f.name.replace('_', '-')} must be a positive number, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_limit_flags(parser) -> None:
    """One ``heta-fast serve`` flag per :class:`ServiceLimits` field."""
    group = parser.add_argument_group("limits per request (shown in GET /health)")
    for f in dataclasses.fields(ServiceLimits):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            group.add_argument(flag, action="store_true", help=f.metadata["help"])
            continue
        kind = float if f.type == "float" else int
        default = f" (default: {f.default})" if f.default is not None else ""
        group.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"] + default)


def limits_from_args(args) -> ServiceLimits:
    return ServiceLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServiceLimits)})


# ------------------------------------------------------------------------------------------ work
def window_count(t: int, window: int | None, overlap: float) -> int:
    """Windows over a context of t tokens (stride W(1 - rho), the last window flush with the end; SPEC §4)."""
    if window is None or t <= window:
        return 1
    stride = max(1, int(round(window * (1 - overlap))))
    starts = len(range(0, t - window + 1, stride))
    return starts + (0 if (starts - 1) * stride == t - window else 1)


@dataclass
class WorkEstimate:
    """Estimated token passes of one request, by stage (``gate``, ``S``, ``I``, ``generate``)."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def dominant(self) -> str:
        return max(self.parts, key=self.parts.get)

    def summary(self) -> str:
        return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(self.parts.items(), key=lambda kv: -kv[1]) if v)


def estimate_work(opts: HetaOptions, *, num_layers: int, positions: list[int], prompt_tokens: int,
                  generate: int = 0, units: list[tuple[int, int]] | None = None) -> WorkEstimate:
    """Token passes of explaining ``positions`` (context lengths) of one text with ``opts``.

    ``prompt_tokens`` is the input before any generated token; ``generate`` the tokens to generate first.
    A sink token (``sink_token`` not None) is counted in every window, as it may be added. ``units``: the
    ``(start, end)`` token ranges of the longest context's units (SPEC §6), when ``opts.units`` is not
    "token"; they run in one window (see :func:`_unit_targets`).
    """
    lead = 0 if opts.sink_token is None else 1
    layers = resolve_layers(opts.layers, num_layers)
    f = 1.0 if layers is None else layers / num_layers
    if units is None:
        parts = _token_targets(opts, positions, lead, f)
    else:
        parts = _unit_targets(opts, positions, lead, f, units)
    parts["generate"] = sum(prompt_tokens + lead + i for i in range(generate))
    if opts.engine == "reference":
        parts = {k: v * REFERENCE_FACTOR for k, v in parts.items()}
    return WorkEstimate(parts)


def _token_targets(opts: HetaOptions, positions: list[int], lead: int, f: float) -> dict[str, float]:
    """gate, S and I of token-level targets (``f``: the fraction of layers the curvature runs through)."""
    m, rank, comps = opts.num_probes, opts.rank, opts.components
    parts = {"gate": 0.0, "S": 0.0, "I": 0.0}

    def s_cost(w: int) -> float:
        return 2 * m * w * w * f if opts.hessian == "exact" else 8 * rank * w * f

    # As Attributor: several targets of one unwindowed text share the gate and the KL pass.
    shared = len(positions) > 1 and opts.engine == "fast" and (opts.window is None or max(positions) <= opts.window)
    if shared:
        n = max(positions) + lead
        parts["gate"] = n if "M" in comps else 0
        parts["I"] = n * (n + 1) / 2 if "I" in comps else 0
        if "S" in comps:
            parts["S"] = sum(s_cost(t + lead) for t in positions)
    else:
        for t in positions:
            n_win = window_count(t, opts.window, opts.overlap)
            w = min(t, opts.window or t) + lead
            parts["gate"] += n_win * w if "M" in comps else 0
            parts["I"] += n_win * w * (w + 1) / 2 if "I" in comps else 0
            parts["S"] += n_win * s_cost(w) if "S" in comps else 0
    return parts


def _unit_targets(opts: HetaOptions, positions: list[int], lead: int, f: float,
                  units: list[tuple[int, int]]) -> dict[str, float]:
    """gate, S and I with units: the whole context in one window, per target (as the engine runs them).

    I: one masked suffix per unit, Σ_u (n − start_u) rows; S exact: m directions per unit over the same
    suffix (≈ 4 passes a row); S low-rank as for tokens. ``refine=k`` adds token-level S and I on the k
    longest units' tokens, counted as if each token's suffix were the whole context (an upper bound).
    """
    m, rank, comps = opts.num_probes, opts.rank, opts.components
    parts = {"gate": 0.0, "S": 0.0, "I": 0.0}
    for t in positions:
        n = t + lead
        starts = [0] * lead + [a + lead for a, _ in units if a < t]
        suffixes = sum(n - a for a in starts)
        refined = n * sum(sorted((min(b, t) - a for a, b in units if a < t), reverse=True)[: opts.refine or 0])
        parts["gate"] += n if "M" in comps else 0
        parts["I"] += suffixes + refined if "I" in comps else 0
        if "S" in comps:
            per_row = 4 * m * f if opts.hessian == "exact" else 0.0
            lowrank = 8 * rank * n * f if opts.hessian == "lowrank" else 0.0
            parts["S"] += per_row * (suffixes + refined) + lowrank * (2 if opts.refine else 1)
    return parts
