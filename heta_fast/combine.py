"""Attr = M · (β S + γ I) (SPEC §4): how the three components become one score per context position."""

from __future__ import annotations

from torch import Tensor


def combine(M: Tensor | None, S: Tensor | None, I: Tensor | None, beta: float, gamma: float, normalize: str):
    """Attr_i = M_i (β S_i + γ I_i); ``normalize='sum'`` divides S and I by their sums first."""

    def norm(x):
        if x is None or normalize == "none":
            return x
        s = x.sum()
        return x / s if s > 0 else x

    S, I = norm(S), norm(I)
    mix = None
    if S is not None:
        mix = beta * S
    if I is not None:
        mix = gamma * I if mix is None else mix + gamma * I
    if mix is None:
        return M.clone()
    return mix if M is None else M * mix
