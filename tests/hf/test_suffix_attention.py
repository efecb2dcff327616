"""The KL pass's suffix attention (prefix + causal suffix merged by log-sum-exp) against the masked math.

``split_causal_attention`` must equal softmax attention under the bottom-right causal mask: to float64
round-off (1e-12 relative) in float64, 1e-6 in float32, and in bf16 within 2x the error of SDPA with the
explicit mask. The routing tests check that ``heta_attention`` takes it only for plainly causal masks
(sliding windows keep their mask) and that the masked KL pass on a real layout goes through it.
"""

import pytest
import torch
import torch.nn.functional as F

from heta_fast.hf import ModelAdapter, suffix_attention
from heta_fast.hf import attention as recording_attention
from heta_fast.hf.suffix_attention import CausalMaskCheck, split_causal_attention
from heta_fast.testing import causal_allowed, rel_err


def masked_math(q, k, v, ok, scaling):
    scores = (q.double() @ k.double().transpose(-1, -2)) * scaling
    return torch.softmax(scores.masked_fill(~ok, float("-inf")), -1) @ v.double()


def qkv(batch, heads, q_len, k_len, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=g, dtype=torch.float64).to(dtype)
            for n in (q_len, k_len, k_len)]


@pytest.mark.parametrize("q_len,k_len", [(2, 3), (5, 13), (64, 65), (100, 300)])
@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_split_equals_masked_softmax(q_len, k_len, dtype, bound):
    q, k, v = qkv(3, 4, q_len, k_len, 16, dtype)
    out = split_causal_attention(q, k, v, 0.25)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, masked_math(q, k, v, causal_allowed(q_len, k_len), 0.25)) < bound


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_in_low_precision_is_as_accurate_as_masked_sdpa(dtype):
    q, k, v = qkv(2, 4, 96, 160, 32, dtype, seed=1)
    ok = causal_allowed(96, 160)
    exact = masked_math(q, k, v, ok, 32**-0.5)
    split_err = rel_err(split_causal_attention(q, k, v, 32**-0.5), exact)
    sdpa_err = rel_err(F.scaled_dot_product_attention(q, k, v, attn_mask=ok, scale=32**-0.5), exact)
    assert split_err <= 2 * sdpa_err + 1e-6


def test_mask_check_accepts_only_bottom_right_causal():
    check = CausalMaskCheck()
    assert check(causal_allowed(5, 9)[None, None], 5, 9)
    assert check(causal_allowed(5, 9)[None, None].expand(3, 1, 5, 9), 5, 9)
    assert not check(causal_allowed(5, 9, window=4)[None, None], 5, 9)
    assert not check(causal_allowed(5, 9)[None, None].float(), 5, 9)  # additive masks are not checked
    padded = causal_allowed(5, 9)[None, None].repeat(2, 1, 1, 1)
    padded[1, :, :, 0] = False
    assert not check(padded, 5, 9)


def test_mask_check_runs_once_per_mask_tensor(monkeypatch):
    """Every layer of a forward gets the same mask tensor: it is compared once, not once per layer."""
    check = CausalMaskCheck()
    mask = causal_allowed(5, 9)[None, None]
    assert check(mask, 5, 9)
    monkeypatch.setattr(torch, "arange", lambda *a, **kw: pytest.fail("the same mask was compared again"))
    assert check(mask, 5, 9)


class Module(torch.nn.Module):
    is_causal = True
    layer_idx = 0


def _spy(monkeypatch):
    calls = []
    real = recording_attention.split_causal_attention
    monkeypatch.setattr(recording_attention, "split_causal_attention", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("mask", ["none", "causal", "window"])
def test_routing_by_mask(monkeypatch, mask):
    calls = _spy(monkeypatch)
    q, k, v = qkv(2, 4, 5, 9, 8, torch.float64)
    k, v = k[:, :2], v[:, :2]  # GQA: two key/value heads for four query heads
    ok = causal_allowed(5, 9, window=3 if mask == "window" else None)
    given = None if mask == "none" else ok[None, None].expand(2, 1, 5, 9)
    with torch.no_grad():
        out, _ = recording_attention.heta_attention(Module(), q, k, v, given)
    ref = masked_math(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), ok, 8**-0.5)
    assert rel_err(out, ref.transpose(1, 2)) < 1e-12
    assert bool(calls) == (mask != "window")


def test_square_and_single_query_calls_keep_sdpa(monkeypatch):
    calls = _spy(monkeypatch)
    for q_len, k_len in [(9, 9), (1, 9)]:
        q, k, v = qkv(1, 2, q_len, k_len, 8, torch.float64)
        with torch.no_grad():
            out, _ = recording_attention.heta_attention(Module(), q, k, v, None)
        assert rel_err(out, masked_math(q, k, v, causal_allowed(q_len, k_len), 8**-0.5).transpose(1, 2)) < 1e-12
    assert not calls


def test_masked_kl_pass_goes_through_the_split(monkeypatch):
    """On a real model layout (llama, GQA) every masked suffix after the first position takes the split path;
    its values are held to the float64 reference by tests/information/test_fast_vs_reference.py."""
    from heta_fast.information import mask_vector
    from heta_fast.information.batched import information_batched
    from heta_fast.testing import random_ids, tiny_model

    calls = _spy(monkeypatch)
    adapter = ModelAdapter(tiny_model("llama"))
    ids = random_ids(12)
    with_split = information_batched(adapter, ids, mask_vector(adapter, ids, "zero", None), chunk_size=3)
    assert calls
    monkeypatch.setattr(recording_attention, "split_causal_attention", lambda *a: None)
    with_mask = information_batched(adapter, ids, mask_vector(adapter, ids, "zero", None), chunk_size=3)
    assert rel_err(with_split, with_mask) < 1e-5


def test_off_cpu_the_caller_keeps_its_mask(monkeypatch):
    monkeypatch.setattr(suffix_attention, "_cpu_flash", None)
    q, k, v = qkv(1, 2, 3, 5, 8, torch.float64)
    assert split_causal_attention(q, k, v, 0.3) is None
