"""heta_fast::kl_from_hidden: compiled CPU kernel and chunked torch fallback vs the float64 oracle.

Ext tests skip when heta_fast._C is not built, unless HETA_FAST_REQUIRE_EXT=1 (CI), where a missing
extension must fail. Fixtures and markers live here on purpose (tests/conftest.py is shared).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from heta_fast import _ext
from heta_fast.information import kl_op, kl_op_reference

REQUIRE_EXT = os.getenv("HETA_FAST_REQUIRE_EXT") == "1"
requires_ext = pytest.mark.skipif(
    not _ext.has_ext() and not REQUIRE_EXT, reason=f"heta_fast._C not built ({_ext.load_error()})"
)

# float32 streamed result vs float64 oracle; atol covers KLs that are ~0.
RTOL, ATOL = 1e-5, 1e-6

BACKENDS = [pytest.param("torch", id="torch"), pytest.param("ext", id="ext", marks=requires_ext)]


def make_inputs(R, d, V, *, bias=False, scale=0.3, dtype=torch.float32, seed=0):
    """Random hidden [R, d], weight [V, d], base_logp [V] (log_softmax of unrelated clean logits)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(R, d, generator=g).to(dtype)
    weight = (torch.randn(V, d, generator=g) * scale).to(dtype)
    b = (torch.randn(V, generator=g) * 0.5).to(dtype) if bias else None
    base_logp = torch.log_softmax(torch.randn(V, generator=g) * 2.0, dim=-1)
    return hidden, weight, base_logp, b


def test_ext_loaded_when_required():
    if REQUIRE_EXT:
        assert _ext.has_ext(), f"HETA_FAST_REQUIRE_EXT=1 but heta_fast._C is unavailable: {_ext.load_error()}"
    else:
        assert _ext.has_ext() or _ext.load_error()  # either loaded, or we know why not


SHAPES = [
    pytest.param(R, d, V, id=f"R{R}-d{d}-V{V}")
    for R in (1, 7, 33)
    for d in (16, 59)
    for V in (97, 1271, 32000)
]
CASES = [
    pytest.param(False, 0.0, id="plain"),
    pytest.param(True, 0.0, id="bias"),
    pytest.param(False, 30.0, id="softcap30"),
    pytest.param(True, 2.0, id="bias-softcap2"),
]


def _check_against_reference(backend, R, d, V, block, with_bias, softcap):
    # "smaller" is deliberately not a divisor of V, so the last block is ragged.
    block_size = {"smaller": V // 3 + 1, "equal": V, "larger": 2 * V + 5}[block]
    hidden, weight, base_logp, bias = make_inputs(R, d, V, bias=with_bias)
    expected = kl_op_reference.kl_from_hidden_ref(hidden, weight, base_logp, bias, softcap)
    out = kl_op.kl_from_hidden(
        hidden, weight, base_logp, bias=bias, softcap=softcap, block_size=block_size, backend=backend
    )
    assert out.shape == (R,) and out.dtype == torch.float32
    assert (out >= 0).all()
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("R, d, V", SHAPES)
@pytest.mark.parametrize("block", ["smaller", "equal", "larger"])
def test_matches_float64_reference(backend, R, d, V, block):
    _check_against_reference(backend, R, d, V, block, with_bias=False, softcap=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias, softcap", CASES[1:])
@pytest.mark.parametrize("R, d, V", SHAPES)
def test_matches_float64_reference_bias_softcap(backend, R, d, V, with_bias, softcap):
    _check_against_reference(backend, R, d, V, "smaller", with_bias=with_bias, softcap=softcap)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [0.01, 3.0], ids=["tiny-kl", "large-logits"])
def test_extreme_scales(backend, scale):
    hidden, weight, base_logp, bias = make_inputs(9, 59, 1271, bias=True, scale=scale)
    expected = kl_op_reference.kl_from_hidden_ref(hidden, weight, base_logp, bias)
    out = kl_op.kl_from_hidden(hidden, weight, base_logp, bias=bias, block_size=300, backend=backend)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_zero_when_hidden_reproduces_clean_logits(backend, softcap):
    hidden, weight, _, bias = make_inputs(5, 59, 1271, bias=True)
    clean = kl_op_reference.head_logits(hidden[2:3], weight, bias, softcap)[0]
    base_logp = torch.log_softmax(clean, dim=-1)
    hidden[4] = hidden[2]
    out = kl_op.kl_from_hidden(hidden, weight, base_logp, bias=bias, softcap=softcap, block_size=100, backend=backend)
    assert (out >= 0).all()
    assert out[2].item() < 1e-6 and out[4].item() < 1e-6
    assert (out[[0, 1, 3]] > 1e-3).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_probability_entries(backend):
    # π = 0 where the bias is −inf: 0·(−inf) must count as 0, not NaN.
    hidden, weight, base_logp, bias = make_inputs(4, 16, 97, bias=True)
    dead = torch.zeros(97, dtype=torch.bool)
    dead[::7] = True
    clean = torch.randn(97).masked_fill(dead, float("-inf"))
    base_logp = torch.log_softmax(clean, dim=-1)
    bias = bias.masked_fill(dead, float("-inf"))
    expected = kl_op_reference.kl_from_hidden_ref(hidden, weight, base_logp, bias)
    out = kl_op.kl_from_hidden(hidden, weight, base_logp, bias=bias, block_size=10, backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_are_upcast(backend, dtype):
    hidden, weight, base_logp, bias = make_inputs(7, 59, 1271, bias=True, dtype=dtype)
    # Upcasting is exact, so the oracle on the same (rounded) values is the right target.
    expected = kl_op_reference.kl_from_hidden_ref(hidden, weight, base_logp, bias)
    out = kl_op.kl_from_hidden(hidden, weight, base_logp, bias=bias, block_size=500, backend=backend)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


def test_reference_matches_brute_force_kl():
    # The oracle itself against an explicit per-row softmax + KL.
    hidden, weight, base_logp, bias = make_inputs(3, 16, 97, bias=True)
    ref = kl_op_reference.kl_from_hidden_ref(hidden, weight, base_logp, bias, softcap=3.0)
    for r in range(3):
        z = (hidden[r].double() @ weight.double().T + bias.double()).div(3.0).tanh().mul(3.0)
        p, q = base_logp.double().exp(), torch.softmax(z, dim=-1)
        torch.testing.assert_close(ref[r].double(), (p * (p.log() - q.log())).sum(), rtol=1e-6, atol=1e-9)


@requires_ext
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck_ext(with_bias):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("heta_fast::kl_from_hidden", "CPU")
    hidden, weight, base_logp, bias = make_inputs(5, 16, 97, bias=with_bias)
    torch.library.opcheck(torch.ops.heta_fast.kl_from_hidden.default, (hidden, weight, base_logp, bias, 2.0, 40))


def test_opcheck_fallback_and_load_order():
    """In fresh interpreters: the reference path passes opcheck, and _C may load before or after the schema."""
    code = textwrap.dedent(
        """
        import os, torch
        first = os.environ["FIRST"]
        if first == "_C":
            import heta_fast._ext  # loads _C (its TORCH_LIBRARY_IMPL) before kl_op.py defines the schema
        from heta_fast import _ext
        from heta_fast.information import kl_op, kl_op_reference
        has_cpu = torch._C._dispatch_has_kernel_for_dispatch_key("heta_fast::kl_from_hidden", "CPU")
        assert has_cpu == _ext.has_ext(), (has_cpu, _ext.load_error())
        h, w = torch.randn(4, 16), torch.randn(97, 16)
        lp = torch.log_softmax(torch.randn(97), -1)
        torch.library.opcheck(torch.ops.heta_fast.kl_from_hidden.default, (h, w, lp, None, 0.0, 30))
        a = kl_op.kl_from_hidden(h, w, lp, block_size=30)
        b = kl_op.kl_from_hidden(h, w, lp, block_size=30, backend="torch")
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        print("ok", first, _ext.has_ext())
        """
    )
    for first, disable in (("ops", "1"), ("_C", "0")):
        env = {**os.environ, "FIRST": first, "HETA_FAST_DISABLE_EXT": disable}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.strip().startswith("ok")


@requires_ext
def test_cpp_checks_are_readable():
    hidden, weight, base_logp, _ = make_inputs(3, 16, 97)
    op = torch.ops.heta_fast.kl_from_hidden
    with pytest.raises(RuntimeError, match="hidden has d=15 but weight has d=16"):
        op(hidden[:, :15], weight, base_logp, None, 0.0, 32)
    with pytest.raises(RuntimeError, match="block_size must be >= 1"):
        op(hidden, weight, base_logp, None, 0.0, 0)
    with pytest.raises(RuntimeError, match="bias must be \\[V\\]"):
        op(hidden, weight, base_logp, torch.zeros(96), 0.0, 32)


BAD_ARGS = [
    pytest.param(lambda h, w, lp: ((h[0], w, lp), {}), "hidden must be \\[R, d\\]", id="hidden-rank"),
    pytest.param(lambda h, w, lp: ((h, w[0], lp), {}), "weight must be \\[V, d\\]", id="weight-rank"),
    pytest.param(lambda h, w, lp: ((h, w, lp[None]), {}), "base_logp must be \\[V\\]", id="logp-rank"),
    pytest.param(lambda h, w, lp: ((h[:, :-1], w, lp), {}), "hidden has d=15 but weight has d=16", id="d-mismatch"),
    pytest.param(lambda h, w, lp: ((h, w, lp[:-1]), {}), "weight has V=97 but base_logp has V=96", id="V-mismatch"),
    pytest.param(lambda h, w, lp: ((h, w, lp), {"bias": torch.zeros(98)}), "bias must be \\[V\\]", id="bias-V"),
    pytest.param(lambda h, w, lp: ((h.long(), w, lp), {}), "hidden must be floating point", id="int-hidden"),
    pytest.param(
        lambda h, w, lp: ((h, w, lp), {"bias": torch.zeros(97, dtype=torch.int32)}),
        "bias must be floating point",
        id="int-bias",
    ),
    pytest.param(lambda h, w, lp: ((h, w, lp), {"block_size": 0}), "block_size must be an int >= 1", id="block0"),
    pytest.param(lambda h, w, lp: ((h, w, lp), {"softcap": float("inf")}), "softcap must be finite", id="softcap-inf"),
    pytest.param(lambda h, w, lp: ((h, w, lp), {"softcap": float("nan")}), "softcap must be finite", id="softcap-nan"),
    pytest.param(lambda h, w, lp: ((h, w, lp), {"backend": "triton"}), "backend must be one of", id="backend"),
    pytest.param(
        lambda h, w, lp: ((h, w, lp.to("meta")), {}), "tensors are on different devices", id="mixed-devices"
    ),
]


@pytest.mark.parametrize("make_args, message", BAD_ARGS)
def test_bad_arguments_raise_clear_errors(make_args, message):
    hidden, weight, base_logp, _ = make_inputs(3, 16, 97)
    args, kwargs = make_args(hidden, weight, base_logp)
    with pytest.raises(ValueError, match=message):
        kl_op.kl_from_hidden(*args, **kwargs)


def test_ext_backend_raises_when_extension_missing(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_LOAD_ERROR", "ImportError: simulated missing _C")
    hidden, weight, base_logp, _ = make_inputs(3, 16, 97)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e .*simulated missing _C|simulated missing _C.*pip install --no-build-isolation -e"):
        kl_op.kl_from_hidden(hidden, weight, base_logp, backend="ext")
    # auto falls back to the reference instead of raising
    expected = kl_op_reference.kl_from_hidden_ref(hidden, weight, base_logp)
    torch.testing.assert_close(kl_op.kl_from_hidden(hidden, weight, base_logp), expected, rtol=RTOL, atol=ATOL)


def test_disable_env_forces_reference(monkeypatch):
    monkeypatch.setenv("HETA_FAST_DISABLE_EXT", "1")
    assert not _ext.has_ext() and "HETA_FAST_DISABLE_EXT" in _ext.load_error()
    calls = []
    real = kl_op_reference.kl_from_hidden_chunked
    monkeypatch.setattr(kl_op_reference, "kl_from_hidden_chunked", lambda *a, **k: calls.append(1) or real(*a, **k))
    hidden, weight, base_logp, _ = make_inputs(3, 16, 97)
    kl_op.kl_from_hidden(hidden, weight, base_logp)
    assert calls
    with pytest.raises(RuntimeError, match="HETA_FAST_DISABLE_EXT"):
        kl_op.kl_from_hidden(hidden, weight, base_logp, backend="ext")


@pytest.mark.parametrize("env, expect_reference", [("torch", True), ("triton", not _ext.has_ext())])
def test_backend_env_override(monkeypatch, env, expect_reference):
    monkeypatch.setenv("HETA_FAST_BACKEND", env)
    calls = []
    real = kl_op_reference.kl_from_hidden_chunked
    monkeypatch.setattr(kl_op_reference, "kl_from_hidden_chunked", lambda *a, **k: calls.append(1) or real(*a, **k))
    hidden, weight, base_logp, _ = make_inputs(3, 16, 97)
    kl_op.kl_from_hidden(hidden, weight, base_logp)
    assert bool(calls) == expect_reference
