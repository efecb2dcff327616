"""One HETA evaluation (one context window, one target): gate, curvature and KL, timed per stage.

``engine='reference'`` runs the plain loops of :mod:`heta_fast.reference`; ``engine='fast'`` runs the batched
paths (rollout kernels, batched HVPs, one-pass KL). Both take the same probes and give the same numbers
up to floating-point error; the tests hold them to that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import reference
from .hf import ModelAdapter
from .options import HetaOptions


@dataclass
class Components:
    M: Tensor | None
    S: Tensor | None
    I: Tensor | None
    timings: dict


def gate_fast(adapter: ModelAdapter, ids: Tensor, rollout: str, layers: int | None) -> Tensor:
    """M ``[t]`` for context ``ids [t]`` (prediction position t-1); see :func:`gate_fast_many`."""
    return gate_fast_many(adapter, ids, [ids.numel() - 1], rollout, layers)[0]


def gate_fast_many(adapter: ModelAdapter, ids: Tensor, predict_at: list[int], rollout: str,
                   layers: int | None) -> list[Tensor]:
    """M from recorded queries/keys, for one or several prediction positions of the same text.

    Attention is recomputed tile by tile (never stored as n×n maps). Causal attention makes the recorded
    q/k/v of a prefix identical to a run on that prefix alone, so one forward serves every target.
    """
    from .rollout import LayerAttention, chain_rollout, flow_rollout

    n = max(predict_at) + 1
    X = adapter.embed(ids[:n])
    if rollout == "reference":
        reference.require_full_kv_heads(adapter)
    first = reference._first_layer(adapter, layers)
    with torch.no_grad(), adapter.record(keep_qk=True, layer_inputs=rollout == "reference") as rec:
        adapter.forward(X)
    layer_list = [
        LayerAttention(q=r.query, k=r.key, scaling=r.scaling, sliding_window=r.sliding_window, softcap=r.softcap)
        for r in (rec.layers[j] for j in range(adapter.num_layers))
    ]
    with torch.no_grad():
        nus = {}
        for j in range(first, adapter.num_layers):
            if rollout == "flow":
                nus[j] = reference.value_norms(adapter, j, rec.layers[j].value).float()
            else:
                nus[j] = reference.raw_value_norms(adapter, j, rec.layer_inputs[j]).float()
        out = []
        for p in predict_at:
            roll = flow_rollout if rollout == "flow" else chain_rollout
            Phi = roll(layer_list, p, last_k=layers)
            contrib = torch.zeros(p + 1, dtype=torch.float32, device=X.device)
            for j, nu in nus.items():
                contrib += (Phi[j, :, : p + 1].float() * nu[:, : p + 1]).sum(0)
            out.append(reference._normalise_gate(contrib))
    return out


def evaluate(
    adapter: ModelAdapter,
    ids: Tensor,
    target_id: int,
    opts: HetaOptions,
    *,
    probes: Tensor | None,
    mask_vec: Tensor | None,
    progress: Callable[[str, int], None] | None = None,
) -> Components:
    """Compute the requested components for context ``ids [t]`` (prediction position t-1) and ``target_id``."""
    timings: dict[str, float] = {}
    M = S = I = None
    fast = opts.engine == "fast"

    def tick(stage):
        return (lambda n: progress(stage, n)) if progress is not None else None

    if "M" in opts.components:
        t0 = time.perf_counter()
        if fast:
            M = gate_fast(adapter, ids, opts.rollout, opts.layers)
        else:
            M = reference.gate(adapter, ids, rollout=opts.rollout, layers=opts.layers)
        timings["gate"] = time.perf_counter() - t0
    if "S" in opts.components:
        t0 = time.perf_counter()
        kw = dict(
            probes=probes,
            hessian=opts.hessian,
            rank=opts.rank,
            curvature=opts.curvature,
            layers=opts.layers,
            seed=opts.seed,
        )
        if fast:
            from .hvp import sensitivity_batched

            S = sensitivity_batched(adapter, ids, target_id, max_memory=opts.max_memory, progress=tick("S"), **kw)
        else:
            S = reference.sensitivity(adapter, ids, target_id, **kw)
        timings["hessian"] = time.perf_counter() - t0
    if "I" in opts.components:
        t0 = time.perf_counter()
        if fast:
            from .kl import information_batched

            I = information_batched(adapter, ids, mask_vec, max_memory=opts.max_memory, progress=tick("I"))
        else:
            I = reference.information(adapter, ids, mask_vec)
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
) -> list[Components]:
    """Several targets of one text (positions ``targets``; context of t is 0 … t-1), sharing work.

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
        from .kl import information_multi

        t0 = time.perf_counter()
        tick = (lambda n: progress("I", n)) if progress is not None else None
        for slot, I in zip(per, information_multi(adapter, ids, predict_at, mask_vec, max_memory=opts.max_memory,
                                                  progress=tick), strict=True):
            slot["I"] = I
        timings["kl"] = (time.perf_counter() - t0) / len(targets)
    out = []
    for slot, t, pr in zip(per, targets, probes, strict=True):
        own = dict(timings)
        S = None
        if "S" in opts.components:
            comp = evaluate(adapter, ids[:t], int(ids[t]), opts.replace(components=("S",)), probes=pr,
                            mask_vec=None, progress=progress)
            S, own["hessian"] = comp.S, comp.timings["hessian"]
        out.append(Components(M=slot.get("M"), S=S, I=slot.get("I"), timings=own))
    return out
