"""What one request may cost on this server: the operator's limits, and the work a request asks for.

The work is the engine's own cost plan (:mod:`heta_fast.plan`, through :meth:`heta_fast.Attributor.plan`), made
from the request alone before any model call, in *token passes* (one token through the whole model, forward):
the same windows, levels, units and memory budget the run will use. The default model on 2 CPU cores does about
500 token passes a second (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import HetaInputError

# The reference engine (float64 loops, a copy of the model) is the oracle, not a serving path.
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
