"""The attribution pipeline: token ids and target positions in, M, S, I and scores per target out.

One call of :meth:`Engine.explain` does, for every target position t (its context is 0 … t−1):

1. the target's log-probability (one forward for all targets);
2. the lead: the sink token, when ``opts.sink_token`` is set, is put in front of every run;
3. the windows of SPEC §4 (one window of the whole context when ``window`` is None or the context fits);
4. per window, the components: gate M (:mod:`heta_fast.gate`), sensitivity S (:mod:`heta_fast.curvature`),
   information I (:mod:`heta_fast.information`), on the fast paths or the float64 references
   (``opts.engine``), with the context's probes sliced per window;
5. the lead dropped again (M re-normalised, the sink's gate mass kept), per-token averages over windows;
6. the score ``Attr = M · (β S + γ I)`` (:mod:`heta_fast.combine`).

Several targets of one text that fit in one window share the gate's forward and the KL pass
(:func:`evaluate_many`). ``api.py`` does everything around it: encoding, targets, generation, results.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .combine import combine
from .curvature import lowrank_curvature, sensitivity_batched, sensitivity_reference
from .errors import HetaInputError, MemoryBudgetError, NumericalError
from .gate import gate_fast, gate_fast_many, gate_from_recording, gate_recording, gate_reference
from .gate.value_norms import normalise_gate
from .hf import CleanRun, ModelAdapter, clean_forward
from .information import information_batched, information_multi, information_reference, mask_vector
from .options import HetaOptions
from .probes import check_probes, draw_probes
from .progress import StageBars, StopCheck, check_stop, progress_bar
from .sharding import Shard
from .units.levels import Groups, group_ranges, parents, with_units
from .units.ranges import check_units, unit_sums


@dataclass
class Components:
    """M, S, I of one run (one window, lead included), and the seconds each stage took."""

    M: Tensor | None
    S: Tensor | None
    I: Tensor | None
    timings: dict


@dataclass
class Explanation:
    """One target's numbers over its real context (lead dropped, windows averaged), float64 on the CPU."""

    M: Tensor | None
    S: Tensor | None
    I: Tensor | None
    scores: Tensor
    target_logprob: float
    sink_gate_mass: float | None
    timings: dict
    units: UnitScores | None = None


@dataclass
class UnitScores:
    """Unit-level numbers of one target (SPEC §6), float64 on the CPU: the units as token ranges over the
    context, ``M_u = Σ M_i``, S_u, I_u, ``scores = M_u (β S_u + γ I_u)``, and the units refined token by
    token (indices into ``ranges``, best first; empty without ``refine``). With levels, the units of coarse units
    that were not expanded have NaN for S, I and the score."""

    ranges: list[tuple[int, int]]
    M: Tensor | None
    S: Tensor | None
    I: Tensor | None
    scores: Tensor
    refined: list[int]
    coarse: UnitScores | None = None  # levels (SPEC §6): the numbers of the level above (which may have its own)
    parent: list[int] | None = None  # levels: each unit's coarse unit (index into coarse.ranges)

    @property
    def scored(self) -> list[bool]:
        """Whether each unit was scored (False: its coarse unit was not expanded; its numbers are NaN)."""
        return [v == v for v in self.scores.tolist()]


# ------------------------------------------------------------------------------------------ one run
def evaluate(
    adapter: ModelAdapter,
    ids: Tensor,
    target_id: int,
    opts: HetaOptions,
    *,
    probes: Tensor | None,
    mask_vec: Tensor | None,
    units: list[tuple[int, int]] | None = None,
    progress: Callable[[str, int], None] | None = None,
    shard: Shard | None = None,
    clean: CleanRun | None = None,
) -> Components:
    """The requested components for context ``ids [t]`` (prediction position t−1) and ``target_id``.

    ``opts.engine == "fast"`` runs the batched paths, ``"reference"`` the float64 loops; both take the same
    probes and give the same numbers up to floating-point error (the tests hold them to that).
    With ``units`` (``(start, end)`` ranges, SPEC §6) S and I are per unit; M is always per token. ``shard``:
    S and I split over the ranks of a process group (:mod:`heta_fast.sharding`; fast engine), the same numbers.
    ``clean``: the clean forward over ``ids`` (fast engine), when the caller already ran it; with both S and I it is
    otherwise run once here and shared.
    """
    timings: dict[str, float] = {}
    M = S = I = None
    fast = opts.engine == "fast"

    def tick(stage):
        return (lambda n: progress(stage, n)) if progress is not None else None

    shares_clean = fast and clean is None and "S" in opts.components and "I" in opts.components
    if "M" in opts.components:
        t0 = time.perf_counter()
        if shares_clean:  # the gate records the clean forward S and I start from: one forward for all three
            M, clean = gate_and_clean_run(adapter, ids, opts)
        else:
            gate = gate_fast if fast else gate_reference
            M = gate(adapter, ids, rollout=opts.rollout, layers=opts.layers)
        timings["gate"] = time.perf_counter() - t0
    if shares_clean and clean is None:
        t0 = time.perf_counter()
        clean = shared_clean_run(adapter, ids, opts)
        timings["clean"] = time.perf_counter() - t0
    if "S" in opts.components:
        t0 = time.perf_counter()
        kw = dict(probes=probes, units=units, hessian=opts.hessian, rank=opts.rank,
                  lowrank_passes=opts.lowrank_passes, curvature=opts.curvature, layers=opts.layers, seed=opts.seed)
        if fast:
            S = sensitivity_batched(adapter, ids, target_id, max_memory=opts.max_memory, progress=tick("S"),
                                    shard=shard, clean=clean, **kw)
        else:
            S = sensitivity_reference(adapter, ids, target_id, **kw)
        timings["hessian"] = time.perf_counter() - t0
    if "I" in opts.components:
        t0 = time.perf_counter()
        if fast:
            I = information_batched(adapter, ids, mask_vec, units=units, max_memory=opts.max_memory,
                                    progress=tick("I"), shard=shard, clean=clean)
        else:
            I = information_reference(adapter, ids, mask_vec, units)
        timings["kl"] = time.perf_counter() - t0
    return Components(M=M, S=S, I=I, timings=timings)


def evaluate_many(
    adapter: ModelAdapter,
    ids: Tensor,
    targets: list[int],
    opts: HetaOptions,
    *,
    probes: list[Tensor | None],
    mask_vec: Tensor | None,
    progress: Callable[[str, int], None] | None = None,
    shard: Shard | None = None,
) -> list[Components]:
    """Several targets of one text (positions ``targets``; context of t is 0 … t−1), sharing work.

    The gate shares one recorded forward, the KL term one masked pass (each masked suffix yields the
    hidden states of every later prediction position). S runs per target: its cost is the backwards.
    Fast engine only; the reference engine loops over :func:`evaluate`. ``progress(stage, n)`` is called
    between chunks of work, as in :func:`evaluate`.
    """
    predict_at = [t - 1 for t in targets]
    per = [dict() for _ in targets]
    timings = {}
    if "M" in opts.components:
        t0 = time.perf_counter()
        for slot, M in zip(per, gate_fast_many(adapter, ids, predict_at, opts.rollout, opts.layers), strict=True):
            slot["M"] = M
        timings["gate"] = (time.perf_counter() - t0) / len(targets)
    if "I" in opts.components:
        t0 = time.perf_counter()
        tick = (lambda n: progress("I", n)) if progress is not None else None
        for slot, I in zip(per, information_multi(adapter, ids, predict_at, mask_vec, max_memory=opts.max_memory,
                                                  progress=tick, shard=shard), strict=True):
            slot["I"] = I
        timings["kl"] = (time.perf_counter() - t0) / len(targets)
    out = []
    for slot, t, pr in zip(per, targets, probes, strict=True):
        own = dict(timings)
        S = None
        if "S" in opts.components:
            comp = evaluate(adapter, ids[:t], int(ids[t]), opts.replace(components=("S",)), probes=pr,
                            mask_vec=None, progress=progress, shard=shard)
            S, own["hessian"] = comp.S, comp.timings["hessian"]
        out.append(Components(M=slot.get("M"), S=S, I=slot.get("I"), timings=own))
    return out


def shared_clean_run(adapter: ModelAdapter, ids: Tensor, opts: HetaOptions) -> CleanRun:
    """The clean forward over ``ids`` that S and I of one attribution both start from (run once, not per stage)."""
    layer = None if opts.layers is None else adapter.first_layer(opts.layers)
    with torch.no_grad():
        return clean_forward(adapter, adapter.embed(ids).detach(), [ids.numel() - 1], layer)


def gate_and_clean_run(adapter: ModelAdapter, ids: Tensor, opts: HetaOptions) -> tuple[Tensor, CleanRun]:
    """M and the shared clean forward from one forward: the gate records the clean run instead of running its own
    (on a long document a forward costs as much as a few dozen masked rows). Fast engine."""
    with gate_recording(adapter, opts.rollout) as rec:
        clean = shared_clean_run(adapter, ids, opts)
    (M,) = gate_from_recording(adapter, rec, [ids.numel() - 1], opts.rollout, opts.layers)
    return M, clean


def shares_passes(positions: list[int], opts: HetaOptions) -> bool:
    """Whether several targets of one text run together (:func:`evaluate_many`): the fast engine, token level,
    and every context within one window."""
    return len(positions) > 1 and opts.engine == "fast" and (opts.window is None or max(positions) <= opts.window)


# ----------------------------------------------------------------------------- windows, lead, probes
def window_starts(t: int, window: int | None, overlap: float) -> list[int]:
    """Window start positions (SPEC §4): stride W(1−ρ), the last window flush with the end of the context."""
    if window is None or t <= window:
        return [0]
    stride = max(1, int(round(window * (1 - overlap))))
    starts = list(range(0, t - window + 1, stride))
    if starts[-1] != t - window:
        starts.append(t - window)
    return starts


def context_probes(probes: Tensor | None, opts: HetaOptions, d: int, t: int) -> Tensor | None:
    """The probes of the whole context ``[t, m, d]``: the given ones (checked) or seeded ones; None without S.

    Drawn for the whole context in (i, k) order, so a token's probes do not depend on windowing. With
    ``layers=k`` the differentiated rows have the model's width too, so the same check holds.
    """
    if "S" not in opts.components:
        return None
    if probes is None:
        return draw_probes(t, opts.num_probes, d, opts.seed)
    full = torch.as_tensor(probes)
    check_probes(full, t, d)
    return full


def window_probes(full: Tensor | None, start: int, w_len: int, lead: int) -> Tensor | None:
    """Rows [start, start + w_len) of the context's probes, with ``lead`` zero rows in front (the sink).

    A zero probe leaves the sink's S at 0 (it is dropped anyway) and the real tokens' probes are those
    of the run without a sink, so S of a token does not depend on whether a sink is used.
    """
    if full is None:
        return None
    window = full[start : start + w_len]
    if lead:
        window = torch.cat([window.new_zeros((lead, *window.shape[1:])), window])
    return window


def drop_lead(M: Tensor | None, S: Tensor | None, I: Tensor | None, k: int):
    """Drop the first k positions (the sink) of a run's components: ``(M, S, I, sink gate mass)``.

    M is re-normalised over the remaining tokens (uniform if none of them gets gate mass, as in SPEC §1).
    """
    if k == 0:
        return M, S, I, None
    mass = None
    if M is not None:
        mass = float(M[:k].sum())
        M = normalise_gate(M[k:])
    return M, None if S is None else S[k:], None if I is None else I[k:], mass


# ---------------------------------------------------------------------------------------- the engine
class Engine:
    """Runs attributions on one model: the fast paths on the model itself, the references on a float64 copy.

    Args:
        adapter: the model seen through :class:`~heta_fast.hf.ModelAdapter`.
        progress: show progress bars for long work.
        shard: split each attribution's S and I over the ranks of a process group (:mod:`heta_fast.sharding`);
            every rank runs the same calls and gets the whole result.
    """

    def __init__(self, adapter: ModelAdapter, *, progress: bool = False, shard: Shard | None = None):
        self.adapter = adapter
        self.progress = progress
        self.shard = shard
        self._reference_adapter: ModelAdapter | None = None
        self._reference_of = None  # the fast view's state the float64 copy was made from

    def adapter_for(self, opts: HetaOptions) -> ModelAdapter:
        """The model as the engine named by ``opts.engine`` runs it (the reference: a float64 copy, made once
        per state of the model's weights)."""
        if opts.engine == "fast":
            return self.adapter
        if self._reference_adapter is None or self._reference_of != self.adapter.view_state:
            self._reference_adapter = ModelAdapter(copy.deepcopy(self.adapter.model).to(torch.float64))
            self._reference_of = self.adapter.view_state
        return self._reference_adapter

    def _shard(self, opts: HetaOptions) -> Shard | None:
        """The shard the fast engine splits work with (the reference engine is the one-process oracle)."""
        return self.shard if opts.engine == "fast" else None

    def explain(self, ids: Tensor, positions: list[int], opts: HetaOptions, *, probes: Tensor | None = None,
                lead: Tensor | None = None, units: list[list[tuple[int, int]]] | None = None,
                coarse: list[list[Groups] | None] | None = None,
                should_stop: StopCheck | None = None) -> list[Explanation]:
        """One :class:`Explanation` per target position of ``ids [n]`` (each 1 ≤ t ≤ n−1).

        ``opts`` must be resolved (``sink_token`` an id or None, ``layers`` a number or None). ``lead``: the
        tokens put in front of every window and left out of M, S and I (the sink, and special tokens such as
        a BOS); by default ``[opts.sink_token]``, or nothing. ``units``: one partition of each target's
        context into ``(start, end)`` token ranges (SPEC §6), or None for tokens; units run over the whole
        context in one window. ``coarse``: with ``units``, each target's coarse levels, coarsest first, each as runs
        of unit indices (SPEC §6, *Levels*; :func:`heta_fast.units.levels.coarse_levels`), or None for one level.
        The model is used only through the adapter's working view
        (:meth:`ModelAdapter.attached`), never changed. ``should_stop()`` is checked between chunks of work;
        when it returns True the call raises :class:`~heta_fast.errors.HetaCancelled`.
        """
        if opts.max_memory == "auto":
            from .plan import resolve_max_memory

            opts = opts.replace(max_memory=resolve_max_memory("auto", self.adapter.device))
        with self.adapter.attached():
            return self._explain(ids, positions, opts, probes, lead, units, coarse, should_stop)

    def _explain(self, ids: Tensor, positions: list[int], opts: HetaOptions, probes: Tensor | None,
                 lead: Tensor | None, units: list[list[tuple[int, int]]] | None,
                 coarse: list[list[Groups] | None] | None, should_stop: StopCheck | None) -> list[Explanation]:
        adapter = self.adapter_for(opts)
        if lead is None:
            lead = ids.new_tensor([] if opts.sink_token is None else [opts.sink_token])
        t_start = time.perf_counter()
        mask_vec = None
        if "I" in opts.components:
            mask_vec = mask_vector(adapter, ids, opts.mask, opts.mask_token_id).detach()
        # One forward gives every target's log-probability (logits only at the positions asked for). A unit run of
        # one target reads it from the clean forward its S and I start from instead (where it has one): on a long
        # document that is a whole forward saved.
        from_clean = units is not None and len(positions) == 1
        target_logprobs = None if from_clean else _target_logprobs(adapter, ids, lead, positions)
        setup = time.perf_counter() - t_start

        shared = shares_passes(positions, opts)
        if units is not None:
            coarse = coarse or [None] * len(positions)
            parts = [self._units(adapter, ids, t, opts, probes, mask_vec, lead, ranges, should_stop, c, from_clean)
                     for t, ranges, c in zip(positions, units, coarse, strict=True)]
            if from_clean:
                target_logprobs = [p[-1] for p in parts]
            parts = [p[:-1] for p in parts]
        elif shared:  # several targets of one text: gate and KL share their forwards
            d, k = adapter.hidden_size, lead.numel()
            comps = evaluate_many(adapter, torch.cat([lead, ids]), [t + k for t in positions], opts, mask_vec=mask_vec,
                                  probes=[window_probes(context_probes(None, opts, d, t), 0, t, k) for t in positions],
                                  progress=StageBars(False, {}, should_stop).update, shard=self._shard(opts))
            parts = [(*drop_lead(c.M, c.S, c.I, k), dict(c.timings)) for c in comps]
        else:
            parts = []
            bar = progress_bar(len(positions), "targets", self.progress and len(positions) > 1)
            for t in positions:
                parts.append(self._windowed(adapter, ids, t, opts, probes, mask_vec, lead, should_stop))
                bar.update(1)
            bar.close()
        out = []
        for logprob, (M, S, I, sink_mass, timings, *unit_scores) in zip(target_logprobs, parts, strict=True):
            timings["total"] = sum(timings.values()) + setup / len(positions)
            if unit_scores:
                out.append(Explanation(M=M, S=S, I=I, scores=unit_scores[1], target_logprob=logprob,
                                       sink_gate_mass=sink_mass, timings=timings, units=unit_scores[0]))
            else:
                out.append(_finish(M, S, I, opts, logprob, sink_mass, timings))
        return out

    def _units(self, adapter: ModelAdapter, ids: Tensor, t: int, opts: HetaOptions, probes: Tensor | None,
               mask_vec: Tensor | None, lead: Tensor, ranges: list[tuple[int, int]], should_stop: StopCheck | None = None,
               coarse: list[Groups] | None = None, logprob_from_clean: bool = False):
        """Unit-level M, S, I and scores over the whole context of target t (SPEC §6).

        With ``coarse`` (coarse levels, coarsest first, as runs of unit indices; SPEC §6, *Levels*): level 1 scores
        every coarse unit of the coarsest level, each next level the units inside the ``opts.expand`` best of the
        level above, down to the units; the others stay unscored (NaN here). Then, with
        ``refine=k``, token-level S and I on the tokens of the k best scored units. Every level reads S from one
        low-rank factorisation (``hessian="lowrank"`` on the fast engine), so only the KL work grows per level.
        The lead (sink) takes no part in S and I and is dropped from M. Returns ``(M, S, I, sink gate mass,
        timings, UnitScores, token scores, log p(target))``, the last from the shared clean forward with
        ``logprob_from_clean`` (else None): token-level M over the context; token S, I and scores NaN outside
        the refined units.
        """
        ranges = check_units(ranges, t)
        if [r for u in ranges for r in range(*u)] != list(range(t)):
            raise HetaInputError(f"units must partition the context 0 … {t - 1}; got {ranges}")
        levels = _UnitLevels(self, adapter, ids, t, opts, probes, mask_vec, lead, should_stop)
        try:
            M = levels.gate()  # first: where S or I need the clean forward, the gate records it
            logprob = levels.target_logprob() if logprob_from_clean else None
            units = levels.score(ranges, "") if coarse is None else _coarse_to_fine(levels, ranges, coarse, M)
        except MemoryBudgetError as e:
            raise MemoryBudgetError(f"units run over the whole context ({t} tokens) in one window, which does not "
                                    f"fit max_memory: {str(e).split('; ')[0]}; raise max_memory") from e

        nan = torch.full((t,), float("nan"), dtype=torch.float64)
        S_tok, I_tok, tok_scores = nan.clone(), nan.clone(), nan.clone()
        if opts.refine:
            units.refined = _best(units.scores, opts.refine)
            tokens = sorted(i for j in units.refined for i in range(*ranges[j]))
            fine_tok = levels.score([(i, i + 1) for i in tokens], "refine: ", timing_suffix="_refine", quiet=True)
            idx = torch.tensor(tokens, dtype=torch.long)
            for full, part in ((S_tok, fine_tok.S), (I_tok, fine_tok.I)):
                if part is not None:
                    full[idx] = part
            tok_scores[idx] = fine_tok.scores
        keep = "S" in opts.components, "I" in opts.components
        return (M, S_tok if keep[0] else None, I_tok if keep[1] else None, levels.sink_mass, levels.timings, units,
                tok_scores, logprob)

    def _windowed(self, adapter: ModelAdapter, ids: Tensor, t: int, opts: HetaOptions, probes: Tensor | None,
                  mask_vec: Tensor | None, lead: Tensor, should_stop: StopCheck | None = None):
        """M, S, I ``[t]`` for target position t: one window, or the averages over windows (SPEC §4).

        Each window runs as lead + its tokens and the lead is dropped from it again.
        Returns ``(M, S, I, sink gate mass averaged over windows or None, timings)``.
        """
        ctx = ids[:t]
        target_id = int(ids[t])
        timings: dict[str, float] = {}
        windows = window_starts(t, opts.window, opts.overlap)
        full_probes = context_probes(probes, opts, adapter.hidden_size, t)  # drawn once, sliced per window
        sums: dict[str, Tensor] = {}
        counts = torch.zeros(t, dtype=torch.float64)
        sink_masses: list[float] = []
        bar = progress_bar(len(windows), "windows", self.progress and len(windows) > 1)
        for start in windows:
            check_stop(should_stop)
            w_ids = ctx[start : start + (opts.window or t)]
            w_len = w_ids.numel()
            n_run = w_len + lead.numel()
            totals = {"S": n_run * opts.num_probes if opts.hessian == "exact" else None, "I": n_run}
            with StageBars(self.progress, totals=totals, should_stop=should_stop) as bars:
                comp = evaluate(adapter, torch.cat([lead, w_ids]), target_id, opts,
                                probes=window_probes(full_probes, start, w_len, lead.numel()),
                                mask_vec=mask_vec, progress=bars.update, shard=self._shard(opts))
            for k, v in comp.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            *window_comps, sink_mass = drop_lead(comp.M, comp.S, comp.I, lead.numel())
            if sink_mass is not None:
                sink_masses.append(sink_mass)
            for name, val in zip(("M", "S", "I"), window_comps, strict=True):
                if val is not None:
                    acc = sums.setdefault(name, torch.zeros(t, dtype=torch.float64))
                    acc[start : start + w_len] += val.detach().double().cpu()
            counts[start : start + w_len] += 1
            bar.update(1)
        bar.close()
        avg = {name: acc / counts for name, acc in sums.items()}
        if "M" in avg:
            avg["M"] = normalise_gate(avg["M"])  # windows each sum to 1; re-normalise the average (SPEC §4)
        sink_mass = sum(sink_masses) / len(sink_masses) if sink_masses else None
        return avg.get("M"), avg.get("S"), avg.get("I"), sink_mass, timings


def _target_logprobs(adapter: ModelAdapter, ids: Tensor, lead: Tensor, positions: list[int]) -> list[float]:
    """log p(ids[t] | lead + ids[:t]) for every t in ``positions``, from one forward."""
    with torch.no_grad():
        X = adapter.embed(torch.cat([lead, ids[: max(positions)]]))
        rows = torch.tensor([t - 1 + lead.numel() for t in positions], device=ids.device)
        logits = adapter.forward(X, keep=rows).logits[0]
    if not torch.isfinite(logits).all():
        raise NumericalError("the model produced non-finite logits (NaN/Inf); check its weights and dtype")
    logp = torch.log_softmax(logits.double(), -1)
    return [float(logp[k, int(ids[t])]) for k, t in enumerate(positions)]


def _finish(M, S, I, opts: HetaOptions, target_logprob: float, sink_gate_mass: float | None,
            timings: dict) -> Explanation:
    """Float64 CPU components, checked finite, and their combined score."""
    M, S, I = _checked_cpu(M=M, S=S, I=I)
    scores = combine(M, S, I, opts.beta, opts.gamma, opts.normalize)
    return Explanation(M=M, S=S, I=I, scores=scores, target_logprob=target_logprob,
                       sink_gate_mass=sink_gate_mass, timings=timings)


def _checked_cpu(what: str = "component", **components: Tensor | None) -> tuple[Tensor | None, ...]:
    """The components as float64 CPU tensors (None stays None), in the order given; NaN/Inf is refused."""
    out = []
    for name, val in components.items():
        if val is not None:
            val = val.detach().double().cpu()
            if not torch.isfinite(val).all():
                raise NumericalError(f"{what} {name} has non-finite values; check the model's weights and dtype")
        out.append(val)
    return tuple(out)


class _UnitLevels:
    """What every level of one unit run shares (SPEC §6): the run's ids with the lead in front, the probes, the
    token gate M, and S's source, which on the fast low-rank path is one factorisation read by every level."""

    def __init__(self, engine: Engine, adapter: ModelAdapter, ids: Tensor, t: int, opts: HetaOptions,
                 probes: Tensor | None, mask_vec: Tensor | None, lead: Tensor, should_stop: StopCheck | None):
        self.engine, self.adapter, self.opts, self.mask_vec, self.should_stop = engine, adapter, opts, mask_vec, should_stop
        self.k = lead.numel()
        self.run_ids = torch.cat([lead, ids[:t]])
        self.target_id = int(ids[t])
        if probes is not None and "S" in opts.components:  # the caller's probes: checked before any work
            check_probes(torch.as_tensor(probes), t, adapter.hidden_size)
        self._given_probes, self._t = probes, t
        self.timings: dict[str, float] = {}
        self.M: Tensor | None = None
        self.sink_mass: float | None = None
        self._factors = None
        self._clean: CleanRun | None = None  # the clean forward every level's S and I start from

    @functools.cached_property
    def probes(self) -> Tensor | None:
        """The run's probes ``[k + t, m, d]`` (zero rows for the lead), drawn on first use: low-rank S reads them
        only after its factorisation, so they are not held beside its graphs (at 16,384 tokens 0.7 GiB in float64)."""
        return window_probes(context_probes(self._given_probes, self.opts, self.adapter.hidden_size, self._t), 0,
                             self._t, self.k)

    def clean(self) -> CleanRun | None:
        """The clean forward over the run's ids, run on first use; None where S and I do not start from one (the
        reference engine, or a run without S and I)."""
        if self._clean is None and self._starts_from_clean():
            t0 = time.perf_counter()
            self._clean = shared_clean_run(self.adapter, self.run_ids, self.opts)
            self.timings["clean"] = time.perf_counter() - t0
        return self._clean

    def _starts_from_clean(self) -> bool:
        """Whether S or I of this run start from a shared clean forward (the fast engine)."""
        return self.opts.engine == "fast" and bool({"S", "I"} & set(self.opts.components))

    def target_logprob(self) -> float:
        """log p(target | context) from the clean forward (the model's own logits at the prediction position), or
        from a forward of its own where there is no shared clean forward."""
        clean = self.clean()
        if clean is None:
            return _target_logprobs(self.adapter, torch.cat([self.run_ids, self.run_ids.new_tensor([self.target_id])]),
                                    self.run_ids[:0], [self.run_ids.numel()])[0]
        logits = clean.logits[0]
        if not torch.isfinite(logits).all():
            raise NumericalError("the model produced non-finite logits (NaN/Inf); check its weights and dtype")
        return float(torch.log_softmax(logits.double(), -1)[self.target_id])

    def gate(self) -> Tensor | None:
        """Token-level M over the context (lead dropped), float64 on the CPU; None without M."""
        if "M" in self.opts.components:
            if self._clean is None and self._starts_from_clean():  # one recorded forward: M and the clean run
                t0 = time.perf_counter()
                M, self._clean = gate_and_clean_run(self.adapter, self.run_ids, self.opts)
                self.timings["gate"] = time.perf_counter() - t0
            else:
                comp = evaluate(self.adapter, self.run_ids, self.target_id, self.opts.replace(components=("M",)),
                                probes=None, mask_vec=None)
                self.timings["gate"], M = comp.timings["gate"], comp.M
            M, _, _, self.sink_mass = drop_lead(M, None, None, self.k)
            (self.M,) = _checked_cpu(M=M)
        return self.M

    def score(self, ranges: list[tuple[int, int]], label: str, *, timing_suffix: str = "", quiet: bool = False
              ) -> UnitScores:
        """M_u, S_u, I_u and ``M_u (β S_u + γ I_u)`` (normalised over these units) of ``ranges`` over the context."""
        opts, k = self.opts, self.k
        run_units = [(a + k, b + k) for a, b in ranges]
        lowrank = opts.engine == "fast" and opts.hessian == "lowrank" and "S" in opts.components
        comps = tuple(c for c in opts.components if c == "I" or (c == "S" and not lowrank))
        totals = {"S": len(run_units) * opts.num_probes if opts.hessian == "exact" else None, "I": len(run_units)}
        S = I = None
        with StageBars(self.engine.progress and not quiet, totals=totals, should_stop=self.should_stop,
                       prefix=label) as bars:
            if lowrank:
                if self._factors is None:
                    t0 = time.perf_counter()
                    self._factors = lowrank_curvature(
                        self.adapter, self.run_ids, self.target_id, probes=None, rank=opts.rank,
                        lowrank_passes=opts.lowrank_passes, curvature=opts.curvature, layers=opts.layers,
                        seed=opts.seed, max_memory=opts.max_memory, progress=lambda n: bars.update("S", n),
                        shard=self.engine._shard(opts), clean=self.clean())
                    self.timings["hessian"] = time.perf_counter() - t0
                S = self._factors.unit_norms(run_units, self.probes)
            if comps:
                comp = evaluate(self.adapter, self.run_ids, self.target_id, opts.replace(components=comps),
                                probes=self.probes, mask_vec=self.mask_vec, units=run_units, progress=bars.update,
                                shard=self.engine._shard(opts), clean=self.clean())
                S = comp.S if S is None else S
                I = comp.I
                for name, v in comp.timings.items():
                    key = name + timing_suffix
                    self.timings[key] = self.timings.get(key, 0.0) + v
        S, I = _checked_cpu(label.rstrip(": ") or "unit", S=S, I=I)
        M = None if self.M is None else unit_sums(self.M, ranges)
        return UnitScores(ranges=list(ranges), M=M, S=S, I=I,
                          scores=combine(M, S, I, opts.beta, opts.gamma, opts.normalize), refined=[])


def _best(scores: Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, best first (NaN, an unscored unit, never counts as best)."""
    vals = [float(v) for v in scores]
    scored = [j for j, v in enumerate(vals) if v == v]
    return sorted(scored, key=lambda j: -vals[j])[:k]


def _coarse_to_fine(levels: _UnitLevels, ranges: list[tuple[int, int]], coarse: list[Groups], M: Tensor | None
                    ) -> UnitScores:
    """Levels (SPEC §6): every unit of the coarsest level scored, then at each finer level, down to the units
    (``ranges``), the units inside the ``expand`` best of the level above. Returns the units' numbers, each level's
    attached as the ``coarse`` of the one below it."""
    tiers = with_units(coarse, len(ranges))
    above: UnitScores | None = None
    for depth, groups in enumerate(tiers):
        tier_ranges = group_ranges(groups, ranges)
        parent = None if above is None else parents(tiers[depth - 1], groups)
        best = set() if above is None else set(_best(above.scores, levels.opts.expand))
        chosen = list(range(len(groups))) if parent is None else [u for u, p in enumerate(parent) if p in best]
        scored = levels.score([tier_ranges[u] for u in chosen], f"level {depth + 1}: ")
        above = _with_unscored(scored, chosen, tier_ranges, M, above, parent)
    return above


def _with_unscored(scored: UnitScores, chosen: list[int], ranges: list[tuple[int, int]], M: Tensor | None,
                   coarse: UnitScores | None, parent: list[int] | None) -> UnitScores:
    """One level's numbers spread over all its units: the scored ones (indices ``chosen``) keep theirs; the others
    have M_u (the gate covers every token) and NaN for S, I and the score; the level above and each unit's parent
    in it attached."""
    n = len(ranges)
    idx = torch.tensor(chosen, dtype=torch.long)

    def spread(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        out = torch.full((n,), float("nan"), dtype=torch.float64)
        out[idx] = x
        return out

    return UnitScores(ranges=list(ranges), M=None if M is None else unit_sums(M, ranges), S=spread(scored.S),
                      I=spread(scored.I), scores=spread(scored.scores), refined=[], coarse=coarse, parent=parent)
