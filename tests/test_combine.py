"""Attr = M (β S + γ I) with and without sum-normalisation (SPEC §4)."""

import torch

from heta_fast.combine import combine


def test_combine_formula_and_normalisation():
    M = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    S = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    I = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(combine(M, S, I, 0.5, 0.5, "none"), M * (0.5 * S + 0.5 * I))
    torch.testing.assert_close(combine(M, S, I, 0.3, 0.7, "sum"), M * (0.3 * S / 6 + 0.7 * I / 1))
    torch.testing.assert_close(combine(M, None, None, 0.5, 0.5, "none"), M)
    torch.testing.assert_close(combine(None, S, I, 1.0, 0.0, "none"), S)
