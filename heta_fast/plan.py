"""One cost plan: what an attribution will do, computed from the request alone before any work.

:func:`make_plan` counts, per stage, the *token passes* (one token through the whole model, forward) and the
bytes of intermediates the batched passes will hold, from the same rules the engine runs by (windows from
:func:`heta_fast.engine.window_starts`, chunk sizes and budgets from the components' own functions, levels from
:mod:`heta_fast.units.levels`). Costs in token passes, per target with context n (lead included):

- gate M: n (one recorded forward; the rollouts are cheap);
- S exact: 4·m·f per row of every unit's suffix (m probes, ≈ 4 passes a Hessian–vector product row, f the
  fraction of layers differentiated), per level; S low-rank: 4·rank·f·n per pass of the range finder, once for
  every level and a refinement (they read one factorisation);
- I: Σ_u (n − start_u) masked suffix rows over the units scored (one level: every unit; with levels, every unit
  of the coarsest level plus, at each finer level, as an upper bound, the children of the ``expand`` units of the
  level above whose children cost most;
  ``refine=k``: the k units whose tokens cost most), plus one clean forward (the fast engine's is shared by S and
  every level, and is the gate's recorded forward where there is a gate);
- generate=g: g forwards of the growing text.

Each forward stage also counts the keys its rows attend to (a masked suffix from position a to n sees
(n − a)(n + a + 1)/2 keys in all), so attention is priced row by row rather than every row at the longest context
(8,030-token needle: level 1 planned at 222 s instead of 293 s, for ~80 % of a 276-s KL pass).

Seconds come from a one-time calibration of the machine (:func:`calibrate`: a clean forward, one attention call and
two Hessian–vector products of the model, kept per model, device and thread count for the process and in
``~/.cache/heta_fast/calibration.json``): a row costs ``a + b·kv`` seconds (``kv`` keys it attends to) and an
HVP row ``c`` forward rows. The plan's numbers are upper bounds where the work depends on results (the finer
levels, refinement); for the finer levels it also gives the expected work, with the unit nearest the target and
``expand`` − 1 others drawn at random expanded (``Stage.expected``, ``CostPlan.expected_seconds``). The needle
harness (``benchmarks/eval/needle.py``) records plan against actual for every HETA run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from .errors import MemoryBudgetError
from .options import HetaOptions
from .units.levels import Groups, parents, with_units

# The reference engine (float64 loops on a copy of the model) costs about this many times the fast one.
REFERENCE_FACTOR = 4


@dataclass
class Stage:
    """One stage of a plan: ``component`` (``gate``, ``S``, ``I``, ``generate``), ``name`` as shown (``"I level 1"``),
    ``passes`` (token passes), ``memory`` (bytes of intermediates at its peak), ``seconds`` (None uncalibrated).
    Where the work depends on results (a finer level), ``passes`` is its upper bound and ``expected`` the passes
    with the nearest unit and others drawn at random expanded (None: the work is known). ``keys``: the keys its
    forward rows attend to, summed over the rows (a row at position p sees p + 1), which prices attention row by
    row; None for S, whose rows are priced at the longest context."""

    component: str
    name: str
    passes: float
    memory: int = 0
    seconds: float | None = None
    detail: str = ""
    expected: float | None = None
    keys: float | None = None

    @property
    def expected_seconds(self) -> float | None:
        if self.seconds is None or self.expected is None:
            return self.seconds
        return self.seconds * self.expected / max(self.passes, 1.0)


@dataclass
class CostPlan:
    """What an attribution will do (see the module docstring): its stages, memory, and seconds.

    ``fits`` is False when a stage needs more than ``max_memory``; ``problem`` then says which and what to
    change. ``calibration`` holds the machine figures the seconds come from (None: no seconds)."""

    targets: int
    context_tokens: int
    windows: int
    units: int | None
    coarse_units: int | None  # with levels: the coarse units of all levels (one result entry each)
    expand: int | None
    stages: list[Stage]
    max_memory: int
    fits: bool = True
    problem: str | None = None
    calibration: dict | None = None
    options: dict = field(default_factory=dict)
    coarse_levels: list[int] | None = None  # with levels: the coarse units per level, coarsest first

    @property
    def passes(self) -> float:
        return sum(s.passes for s in self.stages)

    @property
    def peak_memory(self) -> int:
        return max((s.memory for s in self.stages), default=0)

    @property
    def seconds(self) -> float | None:
        """Seconds on this machine, upper bounds where the work depends on results (None uncalibrated)."""
        if any(s.seconds is None for s in self.stages):
            return None
        return sum(s.seconds for s in self.stages)

    @property
    def expected_seconds(self) -> float | None:
        """Seconds with the units that levels expand being the one nearest the target and others drawn at random
        instead of the costliest (what a run takes on average; its ``seconds`` bounds it)."""
        if self.seconds is None:
            return None
        return sum(s.expected_seconds for s in self.stages)

    def work_parts(self) -> dict[str, float]:
        """Token passes per component (``gate``, ``S``, ``I``, ``generate``): what a server's limits compare."""
        parts = {"gate": 0.0, "S": 0.0, "I": 0.0, "generate": 0.0}
        for s in self.stages:
            parts[s.component] += s.passes
        return parts

    def summary(self) -> str:
        """The plan as a few lines of text (what ``heta-fast attribute --plan`` prints)."""
        what = f"{self.units} units" if self.units is not None else "tokens"
        if self.coarse_levels and len(self.coarse_levels) > 1:
            what += (f" in {len(self.coarse_levels)} coarse levels of {' and '.join(map(str, self.coarse_levels))} "
                     f"units, the best {self.expand} expanded at each level")
        elif self.coarse_units is not None:
            what += f" in {self.coarse_units} coarse units, the best {self.expand} expanded"
        head = (f"plan: {self.targets} target(s), context {self.context_tokens} tokens, {what}, "
                f"{self.windows} window(s); {self.passes:,.0f} token passes")
        if self.seconds is not None and self.expected_seconds < self.seconds:
            head += (f", about {_duration(self.expected_seconds)} on this machine (at most {_duration(self.seconds)}, "
                     "if levels expand their costliest units)")
        elif self.seconds is not None:
            head += f", about {_duration(self.seconds)} on this machine"
        lines = [head + f"; peak {_gib(self.peak_memory)} of max_memory {_gib(self.max_memory)}"]
        for s in self.stages:
            secs = "" if s.seconds is None else f"  ~{_duration(s.expected_seconds)}"
            if s.seconds is not None and s.expected is not None:
                secs += f" (at most {_duration(s.seconds)})"
            lines.append(f"  {s.name:<12} {s.passes:>14,.0f} passes  {_gib(s.memory):>9}{secs}  {s.detail}")
        if not self.fits:
            lines.append(f"  does not fit: {self.problem}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(passes=self.passes, peak_memory=self.peak_memory, seconds=self.seconds,
                 expected_seconds=self.expected_seconds)
        return d


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# ------------------------------------------------------------------------------------------- the plan
def make_plan(adapter, opts: HetaOptions, positions: list[int], *, lead: int, prompt_tokens: int,
              generate: int = 0, units: list[list[tuple[int, int]]] | None = None,
              coarse: list[list[Groups] | None] | None = None, calibration: dict | None = None) -> CostPlan:
    """The plan of explaining ``positions`` (context lengths t) with ``opts`` (resolved: ``layers`` a number or
    None, ``max_memory`` bytes), ``lead`` tokens in front of every run (the sink, a BOS).

    ``units``/``coarse``: per target, as :meth:`heta_fast.engine.Engine.explain` takes them (None for tokens).
    """
    from .engine import shares_passes, window_starts

    layers = opts.layers
    f = 1.0 if layers is None else layers / adapter.num_layers
    comps = opts.components
    stages: list[Stage] = []
    n_max = max(positions) + lead
    windows = 1
    if units is None and shares_passes(positions, opts):  # as the engine runs them: gate and KL shared
        if "M" in comps:
            stages.append(Stage("gate", "gate", n_max, keys=_suffix_keys(n_max, 0)))
        if "S" in comps:
            stages.append(Stage("S", "S", sum(_s_passes(opts, t + lead, f) for t in positions)))
        if "I" in comps:
            stages.append(Stage("I", "I", n_max * (n_max + 1) / 2 + n_max,
                                keys=_token_mask_keys(n_max) + _suffix_keys(n_max, 0)))
    elif units is None:
        gate = s = i = gate_keys = i_keys = 0.0
        for t in positions:
            starts = window_starts(t, opts.window, opts.overlap)
            windows = max(windows, len(starts))
            w = min(t, opts.window or t) + lead
            gate += len(starts) * w
            gate_keys += len(starts) * _suffix_keys(w, 0)
            s += len(starts) * _s_passes(opts, w, f)
            # The KL pass's clean forward: the gate's recorded one where the engine shares it (M, S and I, fast).
            own_clean = not _gate_records_clean(opts)
            i += len(starts) * (w * (w + 1) / 2 + (w if own_clean else 0))
            i_keys += len(starts) * (_token_mask_keys(w) + (_suffix_keys(w, 0) if own_clean else 0))
        stages += [Stage("gate", "gate", gate, keys=gate_keys)] * ("M" in comps) + \
            [Stage("S", "S", s)] * ("S" in comps) + [Stage("I", "I", i, keys=i_keys)] * ("I" in comps)
    else:
        coarse = coarse or [None] * len(positions)
        for t, ranges, c in zip(positions, units, coarse, strict=True):
            stages += _unit_stages(opts, t + lead, [(a + lead, b + lead) for a, b in ranges], c, f)
        stages = _merge(stages)
    if generate:
        lengths = [prompt_tokens + lead + i for i in range(generate)]
        stages.append(Stage("generate", "generate", sum(lengths), keys=sum(_suffix_keys(L, 0) for L in lengths)))
    if opts.engine == "reference":
        for s in stages:
            s.passes *= REFERENCE_FACTOR
            s.expected = None if s.expected is None else s.expected * REFERENCE_FACTOR
            s.keys = None if s.keys is None else s.keys * REFERENCE_FACTOR
    n_units = None if units is None else len(units[-1])
    levels = coarse[-1] if coarse else None  # the longest target's
    n_coarse = None if levels is None else sum(len(level) for level in levels)
    plan = CostPlan(targets=len(positions), context_tokens=max(positions), windows=windows, units=n_units,
                    coarse_units=n_coarse, expand=opts.expand if n_coarse is not None else None,
                    coarse_levels=None if levels is None else [len(level) for level in levels], stages=stages,
                    max_memory=opts.max_memory, options=opts.to_dict())
    longest = min(max(positions), opts.window or max(positions)) + lead
    _memory(adapter, opts, plan, longest, layers)
    if calibration is not None:
        plan.calibration = calibration
        for s in plan.stages:
            s.seconds = _seconds(calibration, s, longest, f)
    return plan


def _suffix_keys(n: int, start: int) -> float:
    """Keys the rows start … n − 1 attend to in all (the row at position p sees p + 1 keys)."""
    return (n - start) * (n + start + 1) / 2


def _token_mask_keys(n: int) -> float:
    """Keys of every token's masked suffix over n tokens: Σ_i (suffix from i) = Σ_{m ≤ n} m²."""
    return n * (n + 1) * (2 * n + 1) / 6


def _s_passes(opts: HetaOptions, n: int, f: float, rows: float | None = None) -> float:
    """Token passes of S over a run of n tokens: exact over ``rows`` suffix rows (every token's by default)."""
    if opts.hessian == "exact":
        return 4 * opts.num_probes * f * (n * (n + 1) / 2 if rows is None else rows)
    return 4 * opts.rank * opts.lowrank_passes * f * n


def _unit_stages(opts: HetaOptions, n: int, ranges: list[tuple[int, int]], coarse: list[Groups] | None,
                 f: float) -> list[Stage]:
    """The stages of one unit run over n tokens: its levels and refinement (upper bounds where results decide)."""
    comps = opts.components
    suffix = [n - a for a, _ in ranges]  # masking a unit recomputes its suffix
    keys = [_suffix_keys(n, a) for a, _ in ranges]  # and its rows attend to this many keys in all
    out = [Stage("gate", "gate", n, keys=_suffix_keys(n, 0))] if "M" in comps else []
    lowrank = opts.hessian == "lowrank"
    # (name, masked suffix rows, units, expected rows, keys of the rows)
    levels: list[tuple[str, float, int, float | None, float]] = []
    if coarse is None:
        levels.append(("", sum(suffix), len(ranges), None, sum(keys)))
        scored = list(range(len(ranges)))
    else:
        tiers = with_units(coarse, len(ranges))
        levels.append((" level 1", sum(suffix[g[0]] for g in tiers[0]), len(tiers[0]), None,
                       sum(keys[g[0]] for g in tiers[0])))
        for depth in range(1, len(tiers)):
            # Upper bound: whichever `expand` units of the level above are chosen, their children cost at most
            # as much as the children of the `expand` units whose children cost most.
            owner = parents(tiers[depth - 1], tiers[depth])
            children: dict[int, list[list[int]]] = {}
            for g, p in zip(tiers[depth], owner, strict=True):
                children.setdefault(p, []).append(g)
            cost = {p: sum(suffix[g[0]] for g in kids) for p, kids in children.items()}
            costliest = sorted(children, key=lambda p: -cost[p])[: opts.expand]
            chosen = [g for p in costliest for g in children[p]]
            # Expected: the unit nearest the target is among the `expand` (the gate favours recent tokens: level 1
            # expanded its last block in all 16 needle runs that recorded level 1), the other `expand` − 1 drawn at
            # random, each expanding the mean other unit's children.
            nearest = max(children)
            others = [cost[p] for p in children if p != nearest]
            expected = cost[nearest] + min(opts.expand - 1, len(others)) * (sum(others) / max(len(others), 1))
            levels.append((f" level {depth + 1}", sum(suffix[g[0]] for g in chosen), len(chosen), expected,
                           sum(keys[g[0]] for g in chosen)))
        scored = [g[0] for g in chosen]
    if opts.refine:
        token_rows = sorted((sum(n - i for i in range(*ranges[j])), ranges[j][1] - ranges[j][0],
                             sum(_suffix_keys(n, i) for i in range(*ranges[j]))) for j in scored)
        best = token_rows[-opts.refine:]
        levels.append((" refine", sum(r for r, _, _ in best), sum(c for _, c, _ in best), None,
                       sum(k for _, _, k in best)))
    if "S" in comps:
        if lowrank:
            out.append(Stage("S", "S", _s_passes(opts, n, f), detail=f"{opts.rank * opts.lowrank_passes} products"))
        else:
            for name, rows, count, expected, _ in levels:
                out.append(Stage("S", "S" + name, _s_passes(opts, n, f, rows), detail=f"{count} units",
                                 expected=None if expected is None else _s_passes(opts, n, f, expected)))
    if "I" in comps:
        # The fast engine runs one clean forward for S and every level's KL pass, recorded by the gate where there
        # is one; the reference engine's KL loop runs its own per level.
        shared = opts.engine == "fast"
        for k, (name, rows, count, expected, row_keys) in enumerate(levels):
            clean = 0 if shared and ("M" in comps or k > 0) else n
            out.append(Stage("I", "I" + name, rows + clean, detail=f"{count} units",
                             expected=None if expected is None else expected + clean,
                             keys=row_keys + (_suffix_keys(n, 0) if clean else 0)))
    return out


def _gate_records_clean(opts: HetaOptions) -> bool:
    """Whether a one-target token run's gate records the clean forward that S and I share (the engine's rule)."""
    return opts.engine == "fast" and {"M", "S", "I"} <= set(opts.components)


def _merge(stages: list[Stage]) -> list[Stage]:
    """Stages of several targets summed by name (in first-seen order)."""
    out: dict[str, Stage] = {}
    for s in stages:
        if s.name in out:
            m = out[s.name]
            if m.expected is not None or s.expected is not None:
                m.expected = (m.passes if m.expected is None else m.expected) + (s.passes if s.expected is None
                                                                                  else s.expected)
            m.passes += s.passes
            m.keys = None if m.keys is None or s.keys is None else m.keys + s.keys
        else:
            out[s.name] = Stage(s.component, s.name, s.passes, s.memory, s.seconds, s.detail, s.expected, s.keys)
    return list(out.values())


def _memory(adapter, opts: HetaOptions, plan: CostPlan, n: int, layers: int | None) -> None:
    """Bytes of intermediates per stage (the components' own budget rules); marks the plan unfit, naming what to
    change, when a stage cannot fit ``max_memory``."""
    from .curvature.batched import cpu_slice, curvature_bytes, probe_batch_size
    from .information.batched import mask_chunk_size, mask_row_bytes

    elem = torch.finfo(adapter.dtype).bits // 8
    forward = n * (8 * adapter.hidden_size + 3 * adapter.ffn_width) * elem
    cache = 2 * adapter.num_layers * n * adapter.num_kv_heads * adapter.head_dim * elem
    for s in plan.stages:
        try:
            if s.component in ("gate", "generate"):
                s.memory = forward
            elif s.component == "S" and opts.engine == "fast":
                batch = probe_batch_size(adapter, n, n, opts.max_memory, layers,
                                         suffix_graphs=opts.hessian == "exact")
                if adapter.device.type == "cpu":
                    batch = min(batch, cpu_slice(n))
                factors = 2 * opts.rank * n * adapter.hidden_size * 4 if opts.hessian == "lowrank" else 0
                s.memory = curvature_bytes(adapter, n, n, layers, batch) + factors
            elif s.component == "I" and opts.engine == "fast":
                chunk = mask_chunk_size(adapter, n, opts.max_memory)
                s.memory = chunk * mask_row_bytes(adapter, n) + cache + 8 * adapter.vocab_size
        except MemoryBudgetError as e:
            plan.fits = False
            plan.problem = f"{s.name}: {e}" + ("" if opts.units == "token" else
                                               "; with units, coarse='auto' and a smaller layers= cut the work too")
            return


def _seconds(cal: dict, s: Stage, n: int, f: float) -> float:
    """Seconds of a stage from the calibration: a forward row attending to kv keys costs a + b·kv (summed over the
    stage's rows where it counts their keys, else every row at the longest context n); an HVP row ``hvp`` forward
    rows at f = 1 and n keys (the passes already count 4 per HVP row and the layer fraction)."""
    row = cal["row_a"] + cal["row_b"] * n
    if s.component == "S":
        return s.passes / 4 * cal["hvp_rows"] * row
    if s.keys is not None:
        return s.passes * cal["row_a"] + s.keys * cal["row_b"]
    return s.passes * row


# ---------------------------------------------------------------------------------------- calibration
_CALIBRATIONS: dict[tuple, dict] = {}


# Bumped when the calibration's method changes, so figures measured the old way are not read back.
CALIBRATION_VERSION = 2


def calibration_key(adapter, name: str) -> tuple:
    return (name, str(adapter.dtype), adapter.device.type, torch.get_num_threads(), _cpu_model(), CALIBRATION_VERSION)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def calibrate(adapter, name: str, *, lengths: tuple[int, int] = (512, 2048), hvp_tokens: int = 128,
              cache_file: str | None = None) -> dict:
    """Machine figures of this model (measured once per process, model, dtype, device, threads and CPU; also kept in
    ``cache_file``, default ``~/.cache/heta_fast/calibration.json``): ``row_a`` + ``row_b``·kv seconds per forward
    row, ``row_b`` from one attention call of ``lengths`` (queries, keys) and ``row_a`` from a clean forward of
    ``lengths[0]`` tokens; ``hvp_rows``: forward rows one Hessian–vector row costs (at ``hvp_tokens``). A slope fitted
    to forwards at two short lengths (128 and 512 tokens, until 2026-12-06) came out anywhere from 0 to 2.5x the
    true one, and a 4,006-token plan 5x the run."""
    key = calibration_key(adapter, name)
    if key in _CALIBRATIONS:
        return _CALIBRATIONS[key]
    path = cache_file or os.path.join(_cache_dir(), "calibration.json")
    stored = _read(path)
    skey = json.dumps(key)
    if skey in stored:
        _CALIBRATIONS[key] = stored[skey]
        return stored[skey]
    from .curvature import lowrank_curvature
    from .probes import draw_probes

    gen = torch.Generator().manual_seed(0)
    limit = getattr(adapter.config, "max_position_embeddings", None) or max(lengths)
    q_len, k_len = min(lengths[0], limit // 4), min(lengths[1], limit)  # a small model's position table
    with adapter.attached():
        # a: a row's seconds apart from attention, from a clean forward (whose rows attend to q_len/2 keys on
        # average). b: attention's seconds per row and key over all layers, timed on its own: a forward's
        # per-row time barely grows from 512 to 2,048 tokens on a CPU, and a slope fitted to it is noise.
        ids = torch.randint(0, adapter.vocab_size, (q_len,), generator=gen).to(adapter.device)
        with torch.no_grad():
            adapter.forward(adapter.embed(ids[:8]))  # warm up
            t0 = time.perf_counter()
            adapter.forward(adapter.embed(ids))
            per_row = (time.perf_counter() - t0) / q_len
            shape = (1, adapter.num_heads, q_len, adapter.head_dim)
            q = torch.randn(shape, generator=gen).to(device=adapter.device, dtype=adapter.dtype)
            kv = torch.randn((1, adapter.num_heads, k_len, adapter.head_dim), generator=gen).to(q)
            torch.nn.functional.scaled_dot_product_attention(q[:, :, :8], kv, kv)  # warm up
            t0 = time.perf_counter()
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
            b = (time.perf_counter() - t0) / (q_len * k_len) * adapter.num_layers
        a = max(1e-9, per_row - b * q_len / 2)
        n = hvp_tokens
        ids = torch.randint(0, adapter.vocab_size, (n,), generator=gen).to(adapter.device)
        probes = draw_probes(n, 1, adapter.hidden_size, 0)
        t0 = time.perf_counter()
        lowrank_curvature(adapter, ids, int(ids[-1]), probes=probes, rank=2, lowrank_passes=1, layers=None)
        hvp_seconds = (time.perf_counter() - t0) / 2  # two products (the graph's build shared between them)
    cal = {"row_a": a, "row_b": b, "hvp_rows": hvp_seconds / (n * (a + b * n)), "measured": time.time()}
    _CALIBRATIONS[key] = cal
    stored[skey] = cal
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(stored, fh, indent=1)
    except OSError:
        pass  # a read-only home: the figures stay in this process
    return cal


def _cache_dir() -> str:
    from .models import cache_dir

    return str(cache_dir())


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------ memory default
def available_memory(device: torch.device) -> int:
    """Bytes free for intermediates now: on CUDA the device's free memory, on the CPU the kernel's MemAvailable
    (the physical memory when that cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 * 1024**3


# max_memory="auto": this share of the memory free when the call starts (the rest for the model's own tensors,
# the allocator's slack and the rest of the machine), at least MIN_AUTO_MEMORY.
AUTO_MEMORY_SHARE = 0.6
MIN_AUTO_MEMORY = 256 * 1024**2


def resolve_max_memory(value, device: torch.device) -> int:
    """The ``max_memory`` option as bytes: ``"auto"`` becomes :data:`AUTO_MEMORY_SHARE` of the free memory."""
    if value == "auto":
        return max(MIN_AUTO_MEMORY, int(AUTO_MEMORY_SHARE * available_memory(device)))
    return int(value)


__all__ = ["CostPlan", "Stage", "available_memory", "calibrate", "make_plan", "resolve_max_memory"]
