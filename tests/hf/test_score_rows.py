"""The blocked attention core's fused row passes (heta_fast/hf/score_rows.py): the compiled CPU kernels and the torch
references against the formulas written out in float64, on random rows.

Tolerances: float64 inputs agree to 1e-12 relative (round-off of sums over ≤ 1,000 keys); float32 inputs to 1e-5
relative against the float64 result of the same float32 inputs (the kernels and torch sum in a different order).
Ext tests skip when heta_fast._C is not built, unless HETA_FAST_REQUIRE_EXT=1 (CI), where they must run.
"""

from __future__ import annotations

import os

import pytest
import torch

from heta_fast import _ext, backends
from heta_fast.hf import score_rows
from heta_fast.testing import rel_err

REQUIRE_EXT = os.getenv("HETA_FAST_REQUIRE_EXT") == "1"
requires_ext = pytest.mark.skipif(not _ext.has_ext() and not REQUIRE_EXT,
                                  reason=f"heta_fast._C not built ({_ext.load_error()})")

# (O, N, I, k): keys not a multiple of any vector width, one key, one direction, several outer rows.
SHAPES = [(1, 2, 7, 37), (3, 1, 4, 1), (2, 3, 5, 1000), (1, 1, 1, 16)]
BOUND = {torch.float64: 1e-12, torch.float32: 1e-5}


def rows(O, N, I, k, dtype, seed=0):
    """P (softmax rows with masked, exactly zero keys), dP − δ, and two direction tensors."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(O, I, k, generator=g, dtype=torch.float64) * 3
    if k > 1:
        scores[..., k // 2 + 1 :] = float("-inf")  # a causal-like tail: P is 0 there
    P = torch.softmax(scores, -1)
    dPc = torch.randn(O, I, k, generator=g, dtype=torch.float64)
    G_dS = torch.randn(O, N, I, k, generator=g, dtype=torch.float64)
    G_P = torch.randn(O, N, I, k, generator=g, dtype=torch.float64)
    delta = torch.randn(O, N, I, generator=g, dtype=torch.float64)
    return tuple(x.to(dtype) for x in (P, dPc, G_dS, G_P, delta))


def expected(P, dPc, G_dS, G_P, delta):
    """The formulas in float64, out of place: dS = (x − δ) ⊙ P; A = G_dS − Σ P G_dS, G_dP = P A,
    G = G_P + A dPc, G_S = P (G − Σ P G)."""
    P, dPc, G_dS, G_P, delta = (x.double() for x in (P, dPc, G_dS, G_P, delta))
    Pn, Cn = P[:, None], dPc[:, None]
    dS = (G_dS - delta[..., None]) * Pn
    A = G_dS - (Pn * G_dS).sum(-1, keepdim=True)
    G = G_P + A * Cn
    return dS, Pn * A, Pn * (G - (Pn * G).sum(-1, keepdim=True))


def run(impl, P, dPc, G_dS, G_P, delta):
    x, a, b = G_dS.clone(), G_dS.clone(), G_P.clone()
    if impl == "ext":
        torch.ops.heta_fast.center_mul_rows_(x, delta, P)
        torch.ops.heta_fast.softmax_vjp_rows_(P, dPc, a, b)
    else:
        score_rows.center_mul_rows_reference(x, delta, P)
        score_rows.softmax_vjp_rows_reference(P, dPc, a, b)
    return x, a, b


@pytest.mark.parametrize("impl", [pytest.param("ext", marks=requires_ext), "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_row_passes_match_the_formulas(impl, dtype, shape):
    inputs = rows(*shape, dtype)
    got = run(impl, *inputs)
    for name, a, b in zip(("dS", "G_dP", "G_S"), got, expected(*inputs), strict=True):
        assert a.dtype == dtype
        assert rel_err(a.double(), b) < BOUND[dtype], name
    P = inputs[0]
    assert (got[2][..., P[0, 0] == 0] == 0).all(), "G_S is zero where P is"


@requires_ext
def test_the_wrappers_take_the_kernels_where_they_can(monkeypatch):
    """float32/float64 CPU tensors go to the compiled kernels (the references are not called); bfloat16, a
    non-contiguous direction tensor, mixed dtypes and HETA_FAST_BACKEND=torch go to the references, with the same
    values."""
    assert backends.resolve("score_rows", "auto", "cpu") == "ext"
    assert backends.resolve("score_rows", "auto", "cuda") == "torch"
    calls = []
    for name in ("center_mul_rows_reference", "softmax_vjp_rows_reference"):
        real = getattr(score_rows, name)
        monkeypatch.setattr(score_rows, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    P, dPc, G_dS, G_P, delta = rows(1, 2, 3, 33, torch.float32)
    dS_ref, G_dP_ref, G_S_ref = expected(P, dPc, G_dS, G_P, delta)

    def check(cast, g_p=None):
        P_, dPc_, delta_ = (cast(x) for x in (P, dPc, delta))
        dS = score_rows.center_mul_rows_(cast(G_dS).clone(), delta_, P_)
        g_p = cast(G_P).clone() if g_p is None else g_p
        G_dP, G_S = score_rows.softmax_vjp_rows_(P_, dPc_, cast(G_dS).clone(), g_p)
        bound = 1e-5 if dS.dtype == torch.float32 else 2e-2
        for a, b in ((dS, dS_ref), (G_dP, G_dP_ref), (G_S, G_S_ref)):
            assert rel_err(a.double(), b) < bound

    check(lambda x: x)
    assert calls == []
    check(lambda x: x.bfloat16())
    assert calls == ["center_mul_rows_reference", "softmax_vjp_rows_reference"]
    calls.clear()
    strided = torch.cat([G_P, G_P], -1)[..., : G_P.shape[-1]]
    assert not strided.is_contiguous()
    check(lambda x: x, g_p=strided)
    assert calls == ["softmax_vjp_rows_reference"]
    calls.clear()
    x = G_dS.clone()
    score_rows.center_mul_rows_(x, delta.double(), P)  # mixed dtypes: the reference (it promotes as torch does)
    assert calls == ["center_mul_rows_reference"] and rel_err(x.double(), dS_ref) < 1e-5
    calls.clear()
    monkeypatch.setenv("HETA_FAST_BACKEND", "torch")
    check(lambda x: x)
    assert calls == ["center_mul_rows_reference", "softmax_vjp_rows_reference"]


@requires_ext
def test_kernels_reject_mismatched_rows():
    P, dPc, G_dS, G_P, delta = rows(1, 2, 3, 8, torch.float32)
    with pytest.raises(RuntimeError, match="does not match the rows"):
        torch.ops.heta_fast.softmax_vjp_rows_(P[:, :2], dPc[:, :2], G_dS.clone(), G_P.clone())
    with pytest.raises(RuntimeError, match="delta must be"):
        torch.ops.heta_fast.center_mul_rows_(G_dS.clone(), delta[:, :1], P)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        torch.ops.heta_fast.center_mul_rows_(G_dS.clone(), delta, P.double())
