"""The fast engine on a CUDA GPU against the float64 reference engine on the CPU.

These run only where a GPU is present (a lent device machine; CI has none, so they are skipped and
reported as skipped there, never counted as passing). Tolerances as in the tests/*/test_fast_vs_reference.py files:
M and S 1e-4, I 1e-5 relative to the largest reference value (TF32 is switched off: these compare
float32 arithmetic with float64, not tensor-core rounding). With HETA_FAST_REQUIRE_CUDA=1 (the GPU
session script) the compiled CUDA kernel must be loaded, not the torch fallback.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from heta_fast import Attributor, _ext
from heta_fast.curvature import sensitivity_reference
from heta_fast.curvature.batched import sensitivity_batched
from heta_fast.gate import gate_fast, gate_reference
from heta_fast.hf import ModelAdapter
from heta_fast.information import information_reference, kl_op, kl_op_reference, mask_vector
from heta_fast.information.batched import information_batched
from heta_fast.probes import draw_probes
from heta_fast.testing import TINY_ARCHS, random_ids, rel_err, tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
T = 11


@pytest.fixture(autouse=True)
def _exact_fp32():
    """No TF32 in matmuls: the comparisons below are float32 vs float64."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_cuda_kernel_loaded_when_required():
    """On a GPU run (HETA_FAST_REQUIRE_CUDA=1, set by benchmarks/gpu_session.sh) a missing CUDA kernel fails."""
    if os.getenv("HETA_FAST_REQUIRE_CUDA") != "1":
        pytest.skip("HETA_FAST_REQUIRE_CUDA is not set: not a GPU run")
    assert _ext.cuda_built(), f"heta_fast._C has no CUDA kernels ({_ext.load_error()})"


@pytest.mark.parametrize("R,d,V", [(1, 16, 97), (33, 59, 1271), (130, 576, 49152), (7, 64, 32001)])
@pytest.mark.parametrize("bias,softcap", [(False, 0.0), (True, 0.0), (False, 3.0)])
def test_kl_op_cuda_vs_oracle(R, d, V, bias, softcap):
    if not _ext.cuda_built():
        pytest.skip(f"CUDA kernels not built ({_ext.load_error()})")
    g = torch.Generator().manual_seed(R + d + V)
    hidden = torch.randn(R, d, generator=g)
    weight = torch.randn(V, d, generator=g) * 0.3
    b = torch.randn(V, generator=g) * 0.5 if bias else None
    base_logp = torch.log_softmax(torch.randn(V, generator=g) * 2.0, -1)
    want = kl_op_reference.kl_from_hidden_ref(hidden, weight, base_logp, b, softcap)
    cuda = [x.cuda() if x is not None else None for x in (hidden, weight, base_logp, b)]
    got = kl_op.kl_from_hidden(cuda[0], cuda[1], cuda[2], bias=cuda[3], softcap=softcap, backend="ext", block_size=1000)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu().double(), want.double(), rtol=1e-5, atol=1e-6)


def test_kl_op_cuda_bf16_inputs():
    if not _ext.cuda_built():
        pytest.skip(f"CUDA kernels not built ({_ext.load_error()})")
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 64, generator=g).bfloat16()
    weight = (torch.randn(3001, 64, generator=g) * 0.3).bfloat16()
    base_logp = torch.log_softmax(torch.randn(3001, generator=g), -1)
    want = kl_op_reference.kl_from_hidden_ref(hidden.double(), weight.double(), base_logp)
    got = kl_op.kl_from_hidden(hidden.cuda(), weight.cuda(), base_logp.cuda(), backend="ext")
    # bf16 inputs are exact in float32; the reduction is float32, so the float32 tolerance holds.
    torch.testing.assert_close(got.cpu().double(), want.double(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module", params=TINY_ARCHS)
def pair(request):
    """(float32 CUDA adapter, float64 CPU adapter) over the same tiny model."""
    model = tiny_model(request.param)
    for p in model.parameters():
        p.requires_grad_(False)
    ref = ModelAdapter(copy.deepcopy(model).double())
    return request.param, ModelAdapter(model.cuda()), ref


def test_gate_cuda(pair):
    _, fast, ref = pair
    ids = random_ids(T)
    for layers in (None, 1):
        M = gate_fast(fast, ids.cuda(), "flow", layers)
        assert M.device.type == "cuda"
        assert rel_err(M.cpu(), gate_reference(ref, ids, rollout="flow", layers=layers)) < 1e-4


@pytest.mark.parametrize("kw", [{}, {"curvature": "gauss_newton"}, {"layers": 1}], ids=["exact", "gn", "last_layer"])
def test_sensitivity_cuda(pair, kw):
    _, fast, ref = pair
    ids = random_ids(T)
    probes = draw_probes(T, 3, fast.hidden_size, seed=3)
    S = sensitivity_batched(fast, ids.cuda(), 7, probes=probes.float().cuda(), **kw)
    assert rel_err(S.cpu(), sensitivity_reference(ref, ids, 7, probes=probes, **kw)) < 1e-4


@pytest.mark.parametrize("mask", ["zero", "mean"])
def test_information_cuda(pair, mask):
    _, fast, ref = pair
    ids = random_ids(T)
    I = information_batched(fast, ids.cuda(), mask_vector(fast, ids.cuda(), mask, 3), chunk_size=4)
    assert rel_err(I.cpu(), information_reference(ref, ids, mask_vector(ref, ids, mask, 3))) < 1e-5


@pytest.mark.parametrize("hessian", ["exact", "lowrank"])
def test_attribute_cuda_matches_reference(pair, hessian):
    """The public API on the GPU equals the reference engine for the same seed (probes are drawn on the CPU)."""
    _, fast, _ = pair
    ids = random_ids(T)
    attributor = Attributor(fast.model)
    a = attributor.attribute(ids, num_probes=2, seed=5, hessian=hessian)
    b = attributor.attribute(ids, num_probes=2, seed=5, hessian=hessian, engine="reference")
    for name in ("M", "S", "I", "scores"):
        # low-rank S (the default): the range finder's QR amplifies float32 noise, 1e-3 as on the CPU
        tol = 1e-3 if hessian == "lowrank" and name in ("S", "scores") else 1e-4
        assert rel_err(getattr(a, name), getattr(b, name)) < tol, name
