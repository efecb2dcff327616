"""The clean forward that S and I both start from, run once per attribution and shared.

The KL pass (I) needs the clean run's KV cache (every masked suffix starts behind its clean prefix), the final
hidden states its LM head received at the prediction positions and the model's own logits there; the curvature (S)
needs the same cache and head input, the logits, and with ``layers=k`` the residual stream entering layer L−k. On
a long document one forward costs as much as a few dozen masked rows, and a unit run with levels used to run it
three times (S, then the KL pass of each level); :func:`clean_forward` runs it once for all of them, and where the
attribution has a gate, the gate records this forward instead of running its own (``engine.gate_and_clean_run``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cache import new_full_cache


@dataclass
class CleanRun:
    """One clean forward over ``X`` (the embedding rows, ``[n, d]``).

    ``cache``: every layer's keys and values (a full cache, never cut or written afterwards: users cut copies or
    take views). ``keep``: the positions whose ``head_input`` (``[len(keep), d]``) and ``logits``
    (``[len(keep), V]``, the model's own) were kept. ``layer``/``layer_input``: the residual stream entering
    decoder layer ``layer`` (``[n, d]``), or None.
    """

    X: Tensor
    cache: object
    keep: list[int]
    head_input: Tensor | None
    logits: Tensor
    layer: int | None = None
    layer_input: Tensor | None = None

    def matches(self, X: Tensor, keep: list[int], layer: int | None) -> bool:
        """Whether this run serves a caller needing these rows, kept positions and layer input."""
        return (self.X.shape == X.shape and bool(torch.equal(self.X, X)) and list(keep) == self.keep
                and (layer is None or layer == self.layer))


def clean_forward(adapter, X: Tensor, keep: list[int], layer: int | None = None) -> CleanRun:
    """The clean forward over ``X [n, d]`` (no gradient), keeping what S and I need (see :class:`CleanRun`)."""
    cache = new_full_cache()
    grabbed: dict[str, Tensor] = {}

    def grab(_mod, args, kwargs):
        grabbed["h"] = (args[0] if args else kwargs["hidden_states"])[0]

    handle = adapter.layers[layer].register_forward_pre_hook(grab, with_kwargs=True) if layer is not None else None
    try:
        with torch.no_grad(), adapter.head_input() as seen:
            logits = adapter.forward(X, keep=torch.tensor(keep, device=X.device), past_key_values=cache).logits[0]
    finally:
        if handle is not None:
            handle.remove()
    return CleanRun(X=X, cache=cache, keep=list(keep), head_input=seen[0][0] if seen else None, logits=logits,
                    layer=layer, layer_input=grabbed.get("h"))
