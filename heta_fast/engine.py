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
    """M from recorded queries/keys: attention is recomputed tile by tile, never stored as n×n maps."""
    from .rollout import LayerAttention, chain_rollout, flow_rollout

    t = ids.numel()
    X = adapter.embed(ids)
    if rollout == "reference":
        reference.require_full_kv_heads(adapter)
    with torch.no_grad(), adapter.record(keep_qk=True, layer_inputs=rollout == "reference") as rec:
        adapter.forward(X)
        first = reference._first_layer(adapter, layers)
        layer_list = [
            LayerAttention(q=r.query, k=r.key, scaling=r.scaling, sliding_window=r.sliding_window, softcap=r.softcap)
            for r in (rec.layers[j] for j in range(adapter.num_layers))
        ]
        if rollout == "flow":
            Phi = flow_rollout(layer_list, t - 1, last_k=layers)
        else:
            Phi = chain_rollout(layer_list, t - 1, last_k=layers)
        contrib = torch.zeros(t, dtype=torch.float32, device=X.device)
        for j in range(first, adapter.num_layers):
            if rollout == "flow":
                nu = reference.value_norms(adapter, j, rec.layers[j].value)
            else:
                nu = reference.raw_value_norms(adapter, j, rec.layer_inputs[j])
            contrib += (Phi[j].float() * nu.float()).sum(0)
    return reference._normalise_gate(contrib)


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
