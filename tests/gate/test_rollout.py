"""attn_vecmat (chunked torch, Triton) and the flow/chain rollouts against float64 references.

Triton runs in-process when there is a GPU or TRITON_INTERPRET=1 is already set. Otherwise
``test_triton_interpreted_in_subprocess`` re-runs this file's ``triton`` tests in a child pytest with
TRITON_INTERPRET=1: Triton picks compiled vs interpreted kernels when a ``@triton.jit`` function is
defined, so the variable must be set before the kernel module is imported, and setting it in this
process would silently switch every other test module to the (slow) interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
try:
    import heta_fast  # noqa: F401
except ImportError:  # plain checkout, not pip-installed: only the package dir goes on the path
    sys.path.insert(0, str(REPO_ROOT))

from heta_fast._triton import interpret_mode, triton_importable  # noqa: E402
from heta_fast.backends import resolve  # noqa: E402
from heta_fast.gate.attn_vecmat import LayerAttention, attn_vecmat, attn_vecmat_chunked, attn_vecmat_ref  # noqa: E402
from heta_fast.gate.rollout import chain_rollout, chain_rollout_ref, flow_rollout, flow_rollout_ref  # noqa: E402

# fp32 tolerances: outputs are sums of probabilities; rtol 1e-4 is the contract, atol covers entries
# that are ~0 (fp32 exp/rounding noise ~1e-7 on O(1) sums).
FP32_TOL = dict(rtol=1e-4, atol=1e-5)

TRITON_IN_PROCESS = triton_importable() and (interpret_mode() or torch.cuda.is_available())
requires_triton = pytest.mark.skipif(
    not TRITON_IN_PROCESS,
    reason="Triton needs a GPU or TRITON_INTERPRET=1 (covered by test_triton_interpreted_in_subprocess)",
)


def _device() -> torch.device:
    # A function, not a module-level constant: no CUDA query at import time.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _inputs(n, H, H_kv, dh, B, device="cpu", dtype=torch.float32):
    # Scaled so that softmax rows are neither uniform nor one-hot, and the softcap (3.0) really bites.
    q = 2.0 * torch.randn(H, n, dh, dtype=dtype, device=device)
    k = 2.0 * torch.randn(H_kv, n, dh, dtype=dtype, device=device)
    w = torch.rand(H, B, n, dtype=dtype, device=device)
    return q, k, w


def _layers(L, n, H, H_kv, dh, device="cpu"):
    """L layers with a mix of plain, sliding-window, soft-capped and GQA attention."""
    configs = [(None, None), (5, None), (None, 3.0), (4, 2.5)]
    layers = []
    for l in range(L):
        window, softcap = configs[l % len(configs)]
        q = 2.0 * torch.randn(H, n, dh, device=device)
        k = 2.0 * torch.randn(H_kv, n, dh, device=device)
        layers.append(LayerAttention(q, k, dh**-0.5, window, softcap))
    return layers


NS = [1, 7, 63, 130]
HEADS = [pytest.param(1, 1, id="H1-Hkv1"), pytest.param(4, 2, id="H4-Hkv2"), pytest.param(3, 1, id="H3-Hkv1")]
WINDOWS = [pytest.param(None, id="nowin"), pytest.param(5, id="win5")]
SOFTCAPS = [pytest.param(None, id="nocap"), pytest.param(3.0, id="cap3")]


# --------------------------------------------------------------------------------------------------
# attn_vecmat
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 16], ids=["chunk-auto", "chunk16"])
@pytest.mark.parametrize("softcap", SOFTCAPS)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("B", [1, 3], ids=["B1", "B3"])
@pytest.mark.parametrize("dh", [16, 24], ids=["dh16", "dh24"])
@pytest.mark.parametrize("H,H_kv", HEADS)
@pytest.mark.parametrize("n", NS, ids=[f"n{n}" for n in NS])
def test_attn_vecmat_chunked_vs_ref(n, H, H_kv, dh, B, window, softcap, chunk_size):
    q, k, w = _inputs(n, H, H_kv, dh, B)
    kw = dict(scaling=dh**-0.5, sliding_window=window, softcap=softcap)
    ref = attn_vecmat_ref(q, k, w, **kw)
    out = attn_vecmat_chunked(q, k, w, chunk_size=chunk_size, **kw)
    assert out.dtype == torch.float32 and out.shape == (H, B, n)
    torch.testing.assert_close(out, ref.float(), **FP32_TOL)


def test_attn_vecmat_chunked_budget_and_bf16():
    """The memory budget picks tiles smaller than n; bf16 inputs still accumulate in fp32."""
    q, k, w = _inputs(200, 4, 2, 16, 2)
    kw = dict(scaling=0.25, sliding_window=None, softcap=None)
    ref = attn_vecmat_ref(q, k, w, **kw).float()
    tiny_budget = attn_vecmat_chunked(q, k, w, mem_budget_bytes=4 * 4 * 4 * 48 * 48, **kw)  # 48-row tiles
    torch.testing.assert_close(tiny_budget, ref, **FP32_TOL)
    qb, kb = q.bfloat16(), k.bfloat16()
    ref_b = attn_vecmat_ref(qb, kb, w, **kw).float()  # same rounded inputs, exact math
    out_b = attn_vecmat_chunked(qb, kb, w, chunk_size=64, **kw)
    assert out_b.dtype == torch.float32
    torch.testing.assert_close(out_b, ref_b, **FP32_TOL)


def test_attn_vecmat_expanded_weights():
    """w may be a stride-0 view over heads (how flow_rollout passes rho)."""
    q, k, _ = _inputs(33, 4, 4, 16, 1)
    rho = torch.rand(33)
    w = rho.expand(4, 1, 33)
    ref = attn_vecmat_ref(q, k, w.contiguous(), scaling=0.25)
    torch.testing.assert_close(attn_vecmat_chunked(q, k, w, scaling=0.25, chunk_size=8), ref.float(), **FP32_TOL)


# Triton: every n and head layout, with (dh, B, window, softcap) combinations that cover each value of
# each option (the interpreter is too slow for the full cross product).
TRITON_VARIANTS = [
    pytest.param(16, 1, None, None, id="dh16-B1-nowin-nocap"),
    pytest.param(24, 3, 5, 3.0, id="dh24-B3-win5-cap3"),
    pytest.param(16, 3, None, 3.0, id="dh16-B3-nowin-cap3"),
    pytest.param(24, 1, 5, None, id="dh24-B1-win5-nocap"),
]


@pytest.mark.triton
@requires_triton
@pytest.mark.parametrize("dh,B,window,softcap", TRITON_VARIANTS)
@pytest.mark.parametrize("H,H_kv", HEADS)
@pytest.mark.parametrize("n", NS, ids=[f"n{n}" for n in NS])
def test_triton_attn_vecmat_vs_ref(n, H, H_kv, dh, B, window, softcap):
    q, k, w = _inputs(n, H, H_kv, dh, B, device=_device())
    kw = dict(scaling=dh**-0.5, sliding_window=window, softcap=softcap)
    ref = attn_vecmat_ref(q, k, w, **kw)
    out = attn_vecmat(q, k, w, backend="triton", **kw)
    assert out.dtype == torch.float32 and out.shape == (H, B, n)
    torch.testing.assert_close(out, ref.float(), **FP32_TOL)


@pytest.mark.triton
@requires_triton
@pytest.mark.parametrize(
    "block_m,block_n,window",
    [(16, 16, None), (16, 32, 5), (32, 16, 17), (16, 16, 1)],
    ids=["m16-n16", "m16-n32-win5", "m32-n16-win17", "m16-n16-win1"],
)
def test_triton_attn_vecmat_small_tiles(block_m, block_n, window):
    """Many tiles per row/column: exercises the causal/window tile skipping and tile-edge masks."""
    from heta_fast._triton import load_kernel_module

    kernel = load_kernel_module("attn_vecmat")
    n, H, H_kv, dh, B = 70, 4, 2, 24, 20  # B = 20: a 32-row vector tile, partly masked
    q, k, w = _inputs(n, H, H_kv, dh, B, device=_device())
    ref = attn_vecmat_ref(q, k, w, scaling=dh**-0.5, sliding_window=window, softcap=2.0)
    out = kernel.attn_vecmat_triton(q, k, w, dh**-0.5, window, 2.0, block_m=block_m, block_n=block_n)
    torch.testing.assert_close(out, ref.float(), **FP32_TOL)


@pytest.mark.triton
@requires_triton
def test_triton_attn_vecmat_many_vectors_strided():
    """B > 64 spans several vector tiles (grid axis 2); non-contiguous q/k/w exercise the strides."""
    n, H, dh, B = 40, 2, 16, 70
    q = torch.randn(n, H, dh, device=_device()).transpose(0, 1)  # [H, n, dh], stride(1) != dh
    k = torch.randn(n, H, dh, device=_device()).transpose(0, 1)
    w = torch.rand(H, n, B, device=_device()).transpose(1, 2)  # [H, B, n], stride(2) != 1
    ref = attn_vecmat_ref(q, k, w, scaling=0.25)
    out = attn_vecmat(q, k, w, scaling=0.25, backend="triton")
    torch.testing.assert_close(out, ref.float(), **FP32_TOL)


# --------------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------------

ROLLOUTS = [
    pytest.param(flow_rollout, flow_rollout_ref, id="flow"),
    pytest.param(chain_rollout, chain_rollout_ref, id="chain"),
]
ROLLOUT_CASES = [
    # (n, H, H_kv, dh, p, last_k)
    pytest.param(23, 4, 2, 16, 22, None, id="n23-gqa-plast"),
    pytest.param(23, 4, 2, 16, 10, 2, id="n23-gqa-pmid-last2"),
    pytest.param(40, 3, 3, 24, 39, 1, id="n40-mha-last1"),
    pytest.param(40, 3, 1, 24, 31, None, id="n40-mqa-p31"),
]


@pytest.mark.parametrize("n,H,H_kv,dh,p,last_k", ROLLOUT_CASES)
@pytest.mark.parametrize("rollout,rollout_ref", ROLLOUTS)
def test_rollout_torch_vs_ref(rollout, rollout_ref, n, H, H_kv, dh, p, last_k):
    layers = _layers(3, n, H, H_kv, dh)
    ref = rollout_ref(layers, p, last_k)
    out = rollout(layers, p, last_k, backend="torch", chunk_size=8)  # several tiles per row
    assert out.shape == (3, H, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), **FP32_TOL)
    torch.testing.assert_close(rollout(layers, p, last_k, backend="torch"), ref.float(), **FP32_TOL)


@pytest.mark.triton
@requires_triton
@pytest.mark.parametrize("n,H,H_kv,dh,p,last_k", ROLLOUT_CASES)
@pytest.mark.parametrize("rollout,rollout_ref", ROLLOUTS)
def test_triton_rollout_vs_ref(rollout, rollout_ref, n, H, H_kv, dh, p, last_k):
    layers = _layers(3, n, H, H_kv, dh, device=_device())
    ref = rollout_ref(layers, p, last_k)
    out = rollout(layers, p, last_k, backend="triton")
    torch.testing.assert_close(out, ref.float(), **FP32_TOL)


@pytest.mark.parametrize("rollout,rollout_ref", ROLLOUTS)
def test_rollout_properties(rollout, rollout_ref):
    """Phi >= 0; each computed Phi[l, h] sums to sum(rho) = 1; layers below last_k and columns > p are 0."""
    L, n, H, p = 4, 50, 4, 37
    layers = _layers(L, n, H, 2, 16)
    for last_k in (None, 2):
        phi = rollout(layers, p, last_k, backend="torch")
        first = 0 if last_k is None else L - last_k
        assert (phi >= 0).all()
        torch.testing.assert_close(phi[first:].sum(-1), torch.ones(L - first, H), rtol=0, atol=1e-5)
        assert (phi[:first] == 0).all()
        assert (phi[..., p + 1 :] == 0).all()
    # Flow: Phi^{l,h} = rho^l A^{l,h}, so rho^{l-1} = rho^l/2 + mean_h Phi^{l,h}/2 must also sum to 1 and
    # the top layer's Phi is the attention row of p.
    if rollout is flow_rollout:
        top = layers[-1]
        e_p = torch.zeros(H, 1, n).index_fill_(2, torch.tensor([p]), 1.0)
        kw = dict(scaling=top.scaling, sliding_window=top.sliding_window, softcap=top.softcap)
        A_top = attn_vecmat_ref(top.q, top.k, e_p, **kw)
        torch.testing.assert_close(phi[-1], A_top[:, 0].float(), **FP32_TOL)


@pytest.mark.parametrize("rollout,rollout_ref", ROLLOUTS)
def test_rollout_n1_trivial(rollout, rollout_ref):
    layers = _layers(3, 1, 2, 2, 16)
    phi = rollout(layers, 0, backend="torch")
    torch.testing.assert_close(phi, torch.ones(3, 2, 1), rtol=0, atol=0)
    torch.testing.assert_close(rollout_ref(layers, 0).float(), phi)


def test_chain_vs_flow_for_one_layer():
    """With one layer, flow gives A[p, :] per head and the chain (A/2 + I/2)[p, :] = A[p, :]/2 + e_p/2."""
    layers = _layers(1, 20, 3, 3, 16)
    e_p = torch.zeros(20).index_fill_(0, torch.tensor([19]), 1.0)
    torch.testing.assert_close(chain_rollout(layers, 19), 0.5 * flow_rollout(layers, 19) + 0.5 * e_p)


def test_backend_errors():
    q, k, w = _inputs(5, 2, 2, 16, 1)
    with pytest.raises(ValueError, match="backend"):
        attn_vecmat(q, k, w, scaling=1.0, backend="cuda")
    with pytest.raises(ValueError):
        flow_rollout(_layers(2, 5, 2, 2, 16), p=5)
    with pytest.raises(ValueError):
        chain_rollout(_layers(2, 5, 2, 2, 16), p=4, last_k=3)
    if not triton_importable() or not (torch.cuda.is_available() or interpret_mode()):
        with pytest.raises(RuntimeError, match="triton"):
            resolve("attn_vecmat", "triton", "cpu")
    assert resolve("attn_vecmat", "torch", "cpu") == "torch"
    assert resolve("attn_vecmat", "reference", "cpu") == "reference"
    ref = attn_vecmat(q, k, w, scaling=1.0, backend="reference")
    assert ref.dtype == torch.float32


@pytest.mark.skipif(not triton_importable(), reason="triton is not importable")
def test_load_kernel_module_by_path(monkeypatch):
    """Without the heta_fast.kernels mapping (plain checkout) the kernel file is loaded by path."""
    from heta_fast._triton import load_kernel_module

    monkeypatch.setitem(sys.modules, "heta_fast.kernels", None)  # makes `import heta_fast.kernels` fail
    monkeypatch.delitem(sys.modules, "heta_fast.kernels.attn_vecmat", raising=False)
    module = load_kernel_module("attn_vecmat")
    assert module.__name__ == "heta_fast.kernels.attn_vecmat"
    assert Path(module.__file__).resolve() == REPO_ROOT / "kernels" / "attn_vecmat.py"
    assert callable(module.attn_vecmat_triton)


# --------------------------------------------------------------------------------------------------
# Memory: the chunked path must not materialise n x n
# --------------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[2])
    from heta_fast.gate.attn_vecmat import LayerAttention
    from heta_fast.gate.rollout import flow_rollout, flow_rollout_ref
    from heta_fast.profiling import reset_peak_rss, status_kib

    torch.manual_seed(0)
    n, H, L, dh = 4096, 2, 2, 16
    layers = [LayerAttention(torch.randn(H, n, dh), torch.randn(H, n, dh), dh**-0.5) for _ in range(L)]
    # Warm up on a small problem so lazily allocated buffers (BLAS, allocator arenas) are in the baseline.
    small = [LayerAttention(ly.q[:, :300].clone(), ly.k[:, :300].clone(), ly.scaling) for ly in layers]
    flow_rollout(small, 299, backend="torch", chunk_size=256)
    flow_rollout_ref(small, 299, dtype=torch.float32)

    # VmHWM is this address space's own peak RSS (ru_maxrss would include the parent's, which Linux
    # carries across fork + exec). Writing "5" to clear_refs resets it to the current RSS.
    base = status_kib("VmRSS") if reset_peak_rss() else status_kib("VmHWM")
    if sys.argv[1] == "chunked":
        phi = flow_rollout(layers, n - 1, backend="torch", chunk_size=256)
    else:
        phi = flow_rollout_ref(layers, n - 1, dtype=torch.float32)
    assert torch.isfinite(phi).all()
    print((status_kib("VmHWM") - base) * 1024)
    """
)


def _peak_growth_bytes(mode: str) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, mode, str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return int(res.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux only)")
def test_flow_rollout_chunked_memory():
    """Peak RSS growth of the chunked flow rollout at n=4096 is far below one layer's H*n^2 fp32 maps.

    The materialising float32 reference is the positive control: it must grow by at least H*n^2*4
    bytes, which shows the measurement would catch an n x n allocation.
    """
    n, H = 4096, 2
    n2_bytes = H * n * n * 4  # 128 MiB
    chunked = _peak_growth_bytes("chunked")
    materialised = _peak_growth_bytes("materialised")
    assert materialised >= n2_bytes, f"control failed: materialised growth {materialised / 2**20:.1f} MiB"
    assert chunked < n2_bytes / 8, f"chunked peak growth {chunked / 2**20:.1f} MiB vs n^2 {n2_bytes / 2**20:.0f} MiB"


# --------------------------------------------------------------------------------------------------
# Triton interpreter in a child process
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not triton_importable(), reason="triton is not importable")
@pytest.mark.skipif(TRITON_IN_PROCESS, reason="Triton tests already run in this process")
def test_triton_interpreted_in_subprocess():
    """Run this file's Triton tests under TRITON_INTERPRET=1 in a fresh interpreter (see module docstring)."""
    env = dict(os.environ, TRITON_INTERPRET="1", HETA_FAST_SKIP_AUTOTUNE="1")
    pythonpath = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    # `-m triton` selects the Triton tests of this file (the marker is registered in pyproject.toml).
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "triton"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=str(REPO_ROOT))
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, tail
    summary = tail.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, tail
