"""The causal gate M (SPEC §1) from one recorded forward, without n × n attention maps.

The forward records every layer's queries and keys (:meth:`heta_fast.hf.ModelAdapter.record`); the rollout
then recomputes attention tile by tile (:mod:`heta_fast.gate.rollout`). Causal attention makes the recorded
q/k/v of a prefix identical to a run on that prefix alone, so one forward serves every target of a text.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..hf import ModelAdapter, Recorder
from .attn_vecmat import LayerAttention
from .rollout import chain_rollout, flow_rollout
from .value_norms import normalise_gate, raw_value_norms, require_full_kv_heads, value_norms


def gate_fast(adapter: ModelAdapter, ids: Tensor, rollout: str = "flow", layers: int | None = None) -> Tensor:
    """M ``[t]`` for context ``ids [t]`` (prediction position t-1); see :func:`gate_fast_many`."""
    return gate_fast_many(adapter, ids, [ids.numel() - 1], rollout, layers)[0]


def gate_fast_many(adapter: ModelAdapter, ids: Tensor, predict_at: list[int], rollout: str = "flow",
                   layers: int | None = None) -> list[Tensor]:
    """M for one or several prediction positions of the same text: one ``[p + 1]`` tensor per position."""
    X = adapter.embed(ids[: max(predict_at) + 1])
    with torch.no_grad(), gate_recording(adapter, rollout) as rec:
        adapter.forward(X)
    return gate_from_recording(adapter, rec, predict_at, rollout, layers)


def gate_recording(adapter: ModelAdapter, rollout: str = "flow"):
    """The recording the gate reads (every layer's queries, keys and values; layer inputs for the ``reference``
    rollout): any clean forward over the context run inside it serves :func:`gate_from_recording`, so an
    attribution that needs a clean forward anyway (S and I) records that one instead of running another."""
    if rollout == "reference":
        require_full_kv_heads(adapter)
    return adapter.record(keep_qk=True, layer_inputs=rollout == "reference")


def gate_from_recording(adapter: ModelAdapter, rec: Recorder, predict_at: list[int], rollout: str = "flow",
                        layers: int | None = None) -> list[Tensor]:
    """M per prediction position from a clean forward recorded by :func:`gate_recording`."""
    first = adapter.first_layer(layers)
    layer_list = [
        LayerAttention(q=r.query, k=r.key, scaling=r.scaling, sliding_window=r.sliding_window, softcap=r.softcap)
        for r in (rec.layers[j] for j in range(adapter.num_layers))
    ]
    with torch.no_grad():
        nus = {}
        for j in range(first, adapter.num_layers):
            if rollout == "flow":
                nus[j] = value_norms(adapter, j, rec.layers[j].value).float()
            else:
                nus[j] = raw_value_norms(adapter, j, rec.layer_inputs[j]).float()
        roll = flow_rollout if rollout == "flow" else chain_rollout
        out = []
        for p in predict_at:
            Phi = roll(layer_list, p, last_k=layers)
            contrib = torch.zeros(p + 1, dtype=torch.float32, device=Phi.device)
            for j, nu in nus.items():
                contrib += (Phi[j, :, : p + 1].float() * nu[:, : p + 1]).sum(0)
            out.append(normalise_gate(contrib))
    return out
