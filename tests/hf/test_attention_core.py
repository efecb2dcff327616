"""The attention core's hand-written derivatives against autograd on the plain eager composition (float64).

Values, first and second derivatives must agree to float64 round-off (1e-10 relative) for MHA and GQA,
prefix caches (fewer queries than keys), sliding windows and batched directions under ``torch.func.vmap``
and under ``autograd.grad(is_grads_batched=True)``; ``gradcheck``/``gradgradcheck`` compare with finite
differences. The query-blocked core (long inputs without probabilities) is held to the same comparisons, with its size
threshold forced tiny and blocks of 1, 2 and 3 rows (not dividing q_len), its row passes on the compiled kernels and
on the torch references (heta_fast/hf/score_rows.py), and must save no score-sized tensor.
The routing tests check which path ``heta_attention`` takes.
"""

import os
import textwrap

import pytest
import torch

from heta_fast import _ext
from heta_fast.hf import ModelAdapter, score_rows
from heta_fast.hf import attention as recording_attention
from heta_fast.hf import attention_core as core_module
from heta_fast.hf.attention_core import attention_core
from heta_fast.testing import causal_allowed, live_memory_child, rel_err


REQUIRE_EXT = os.getenv("HETA_FAST_REQUIRE_EXT") == "1"


def eager(q, k, v, allowed, scaling):
    """The plain composition autograd differentiates (what the models' eager attention computes)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    scores = (q @ k.transpose(-1, -2)) * scaling
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
    return probs @ v, probs


CASES = {
    "mha": dict(H=4, H_kv=4, q_len=6, k_len=6),
    "gqa": dict(H=6, H_kv=2, q_len=5, k_len=5),
    "prefix_cache": dict(H=4, H_kv=2, q_len=3, k_len=8),
    "sliding_window": dict(H=4, H_kv=1, q_len=7, k_len=7, window=3),
    "one_query": dict(H=2, H_kv=1, q_len=1, k_len=5),
}


def make(case, B=2, dh=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = CASES[case]

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    q = rnd(B, c["H"], c["q_len"], dh)
    k, v = rnd(B, c["H_kv"], c["k_len"], dh), rnd(B, c["H_kv"], c["k_len"], dh)
    return q, k, v, causal_allowed(c["q_len"], c["k_len"], c.get("window"))


def second_order(fn, q, k, v, directions, batched):
    """Directions [N, ...] through the double backward of Σ w ⊙ O² (a non-linear function of the output)."""
    out = fn(q, k, v)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    grads = torch.autograd.grad((w * out * out).sum(), (q, k, v), create_graph=True)
    if batched == "func":
        return torch.func.vmap(lambda *d: torch.autograd.grad(grads, (q, k, v), d, retain_graph=True))(*directions)
    return torch.autograd.grad(grads, (q, k, v), directions, retain_graph=True, is_grads_batched=True)


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_derivatives_match_autograd(case):
    q, k, v, allowed = make(case)
    core = lambda q, k, v: attention_core(q, k, v, allowed, 0.37)[0]  # noqa: E731
    plain = lambda q, k, v: eager(q, k, v, allowed, 0.37)[0]  # noqa: E731
    O, P = attention_core(q, k, v, allowed, 0.37)
    O_ref, P_ref = eager(q, k, v, allowed, 0.37)
    assert rel_err(O, O_ref) < 1e-12 and rel_err(P, P_ref) < 1e-12
    dO = torch.randn_like(O)
    g = torch.autograd.grad(core(q, k, v), (q, k, v), dO)
    g_ref = torch.autograd.grad(plain(q, k, v), (q, k, v), dO)
    for a, b in zip(g, g_ref, strict=True):
        assert rel_err(a, b) < 1e-10
    dirs = tuple(torch.randn(3, *x.shape, dtype=x.dtype) for x in (q, k, v))
    for batched in ("func", "legacy"):
        h = second_order(core, q, k, v, dirs, batched)
        h_ref = second_order(plain, q, k, v, dirs, batched)
        for a, b in zip(h, h_ref, strict=True):
            assert rel_err(a, b) < 1e-10, batched


@pytest.mark.parametrize("case", ["gqa", "prefix_cache"])
def test_finite_differences(case):
    q, k, v, allowed = make(case, B=1, dh=3)
    fn = lambda q, k, v: attention_core(q, k, v, allowed, 0.5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_mask_with_batch_dimension():
    """HF passes masks as [B, 1, q, k]; each batch element keeps its own mask."""
    q, k, v, allowed = make("gqa")
    per_batch = torch.stack([allowed, allowed & causal_allowed(5, 5, window=2)])[:, None]
    O, _ = attention_core(q, k, v, per_batch, 0.3)
    O_ref, _ = eager(q, k, v, per_batch, 0.3)
    assert rel_err(O, O_ref) < 1e-12


# ------------------------------------------------------------------------------------------ query-blocked
def force_blocked(monkeypatch, rows, B, H, k_len, dtype=torch.float64):
    """Every call takes the blocked core, with ``rows`` query rows per block for this shape."""
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", 0)
    elem = torch.finfo(torch.promote_types(dtype, torch.float32)).bits // 8  # scores are at least float32
    monkeypatch.setattr(core_module, "BLOCK_BYTES", rows * B * H * k_len * elem)
    assert core_module.block_rows(B, H, k_len, dtype) == rows


def blocked_masks(case, allowed, B):
    """The mask forms the core takes: [q, k], [B, 1, q, k] with its own mask per batch element, None (causal)."""
    q_len, k_len = allowed.shape
    per_batch = allowed[None, None].repeat(B, 1, 1, 1)
    if case == "prefix_cache":  # batch element 1 left-padded: its first 3 keys hidden from every query
        per_batch[1, :, :, :3] = False
    elif q_len > 2:
        per_batch[1] &= causal_allowed(q_len, k_len, window=2)
    masks = {"bool": allowed, "per_batch": per_batch}
    if "window" not in CASES[case]:
        masks["causal_none"] = None
    return masks


def use_row_kernels(monkeypatch, kind):
    """Run the blocked core's row passes (heta_fast/hf/score_rows.py) on the compiled kernels where they can run
    (``autograd.grad(is_grads_batched=True)``'s legacy vmap takes the references), or all on the torch references
    (``HETA_FAST_BACKEND=torch``). Returns the list of each pass's choice (True: compiled kernel)."""
    if kind == "torch":
        monkeypatch.setenv("HETA_FAST_BACKEND", "torch")
    elif not _ext.has_ext():
        if REQUIRE_EXT:
            pytest.fail(f"HETA_FAST_REQUIRE_EXT=1 but heta_fast._C is unavailable: {_ext.load_error()}")
        pytest.skip(f"heta_fast._C not built ({_ext.load_error()})")
    choices = []
    real = score_rows._fused
    monkeypatch.setattr(score_rows, "_fused", lambda *t: choices.append(real(*t)) or choices[-1])
    return choices


@pytest.mark.parametrize("row_kernels", ["ext", "torch"])
@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_blocked_core_values_and_derivatives_match_autograd(case, rows, row_kernels, monkeypatch):
    fused = use_row_kernels(monkeypatch, row_kernels)
    q, k, v, allowed = make(case)
    B, H = q.shape[:2]
    force_blocked(monkeypatch, rows, B, H, k.shape[-2])
    for name, mask in blocked_masks(case, allowed, q.shape[0]).items():
        ref_mask = allowed if mask is None else mask
        core = lambda q, k, v, mask=mask: attention_core(q, k, v, mask, 0.37, probs=False)[0]  # noqa: E731
        plain = lambda q, k, v, m=ref_mask: eager(q, k, v, m, 0.37)[0]  # noqa: E731
        O, P = attention_core(q, k, v, mask, 0.37, probs=False)
        assert P is None, "the blocked core returns no probabilities"
        assert rel_err(O, plain(q, k, v)) < 1e-12, name
        dO = torch.randn_like(O)
        g = torch.autograd.grad(core(q, k, v), (q, k, v), dO)
        g_ref = torch.autograd.grad(plain(q, k, v), (q, k, v), dO)
        for a, b in zip(g, g_ref, strict=True):
            assert rel_err(a, b) < 1e-10, name
        dirs = tuple(torch.randn(3, *x.shape, dtype=x.dtype) for x in (q, k, v))
        for batched in ("func", "legacy"):
            h = second_order(core, q, k, v, dirs, batched)
            h_ref = second_order(plain, q, k, v, dirs, batched)
            for a, b in zip(h, h_ref, strict=True):
                assert rel_err(a, b) < 1e-10, (name, batched)
    assert (True in fused) == (row_kernels == "ext") and (False in fused)  # legacy vmap: references


def test_blocked_core_with_probabilities_requested_stays_whole(monkeypatch):
    """probs=True (recording for the gate) keeps the whole-matrix core, whatever the size."""
    q, k, v, allowed = make("gqa")
    force_blocked(monkeypatch, 2, *q.shape[:2], k.shape[-2])
    O, P = attention_core(q, k, v, allowed, 0.3)
    O_ref, P_ref = eager(q, k, v, allowed, 0.3)
    assert rel_err(P, P_ref) < 1e-12 and rel_err(O, O_ref) < 1e-12


@pytest.mark.parametrize("case", ["gqa", "prefix_cache"])
def test_blocked_core_finite_differences(case, monkeypatch):
    q, k, v, allowed = make(case, B=1, dh=3)
    force_blocked(monkeypatch, 2, 1, q.shape[1], k.shape[-2])
    fn = lambda q, k, v: attention_core(q, k, v, allowed, 0.5, probs=False)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def test_blocked_core_batches_an_hvps_directions_by_hand(monkeypatch):
    """Under ``torch.func.vmap`` over an HVP's directions, the blocked core's second backward runs once, with the
    directions as a leading axis (its own vmap rule), rather than through a rule generated per operation."""
    q, k, v, allowed = make("gqa")
    force_blocked(monkeypatch, 2, *q.shape[:2], k.shape[-2])
    directions_seen = []
    real = core_module._blocked_vjp
    monkeypatch.setattr(core_module, "_blocked_vjp", lambda *a: directions_seen.append(a[7].shape[0]) or real(*a))
    dirs = tuple(torch.randn(3, *x.shape, dtype=x.dtype) for x in (q, k, v))
    second_order(lambda q, k, v: attention_core(q, k, v, allowed, 0.37, probs=False)[0], q, k, v, dirs, "func")
    assert directions_seen == [3]


def test_blocked_core_forward_node_batches_an_hvps_directions_by_hand(monkeypatch):
    """An HVP's second backward also runs the forward's attention node backwards (its output feeds the non-linear
    rest of the graph): that first backward takes all directions in one pass too (P once per block), not through
    a rule generated per operation. The graph-building first backward and the plain one use the same function
    with one cotangent."""
    q, k, v, allowed = make("gqa")
    force_blocked(monkeypatch, 2, *q.shape[:2], k.shape[-2])
    directions_seen = []
    real = core_module._blocked_grads
    monkeypatch.setattr(core_module, "_blocked_grads", lambda *a: directions_seen.append(a[3].shape[0]) or real(*a))
    core = lambda q, k, v: attention_core(q, k, v, allowed, 0.37, probs=False)[0]  # noqa: E731
    dirs = tuple(torch.randn(3, *x.shape, dtype=x.dtype) for x in (q, k, v))
    h = second_order(core, q, k, v, dirs, "func")
    assert directions_seen == [1, 3]  # the graph's first backward, then the forward node's share of the HVPs
    h_ref = second_order(lambda q, k, v: eager(q, k, v, allowed, 0.37)[0], q, k, v, dirs, "func")
    for a, b in zip(h, h_ref, strict=True):
        assert rel_err(a, b) < 1e-10
    # A plain first backward (no graph) takes the same function with one direction.
    O = core(q, k, v)
    dO = torch.randn_like(O)
    g = torch.autograd.grad(O, (q, k, v), dO)
    assert directions_seen == [1, 3, 1]
    g_ref = torch.autograd.grad(eager(q, k, v, allowed, 0.37)[0], (q, k, v), dO)
    for a, b in zip(g, g_ref, strict=True):
        assert rel_err(a, b) < 1e-12


def test_blocked_core_grads_vmapped_over_its_attention_inputs_go_item_by_item():
    """The first backward's vmap rule, other branch: with the attention's own inputs varying along the vmapped axis,
    each item is computed alone, and the result equals a loop over the items."""
    gen = torch.Generator().manual_seed(4)
    B, H_kv, n_rep, n, dh = 1, 2, 2, 5, 4

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    key, value = rnd(B, H_kv, n, dh), rnd(B, H_kv, n, dh)
    blocks = core_module._row_blocks(None, n, n, 2)

    def grads(q5, dO):
        O, lse = core_module._BlockedCore.forward(q5, key, value, None, 0.5, blocks)
        return core_module._BlockedCoreGrads.apply(q5, key, value, dO, O, lse, None, 0.5, blocks)

    q5s, dOs = rnd(3, B, H_kv, n_rep, n, dh), rnd(3, B, H_kv, n_rep, n, dh)
    batched = torch.func.vmap(grads)(q5s, dOs)
    for i in range(3):
        for a, b in zip(batched, grads(q5s[i], dOs[i]), strict=True):
            assert rel_err(a[i], b) < 1e-14


def test_blocked_core_graph_building_backward_under_vmap(monkeypatch):
    """The graph-building first backward (:class:`_BlockedCoreBackward`) has the same vmap rule as the one without
    a graph: over dO alone (directions) one pass of ``_blocked_grads`` for all of them; over the attention's own
    inputs item by item. Both equal a loop over the items. (Under ``torch.func.vmap`` no autograd.Function records
    a regular-autograd graph, generated rule or not; the HVPs build the graph outside vmap and vmap its backward.)"""
    gen = torch.Generator().manual_seed(5)
    B, H_kv, n_rep, n, dh = 1, 2, 2, 5, 4

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    key, value = rnd(B, H_kv, n, dh), rnd(B, H_kv, n, dh)
    q5 = rnd(B, H_kv, n_rep, n, dh)
    blocks = core_module._row_blocks(None, n, n, 2)
    O, lse = core_module._BlockedCore.forward(q5, key, value, None, 0.5, blocks)

    def node(q5, dO):
        return core_module._BlockedCoreBackward.apply(q5, key, value, dO, O, lse, None, 0.5, blocks)

    directions_seen = []
    real = core_module._blocked_grads
    monkeypatch.setattr(core_module, "_blocked_grads", lambda *a: directions_seen.append(a[3].shape[0]) or real(*a))
    dOs = rnd(3, B, H_kv, n_rep, n, dh)
    batched = torch.func.vmap(lambda dO: node(q5, dO))(dOs)
    assert directions_seen == [3]
    loop = [node(q5, dOs[i]) for i in range(3)]
    for i in range(3):
        for a, b in zip(batched, loop[i], strict=True):
            assert rel_err(a[i], b) < 1e-14

    q5s = rnd(3, B, H_kv, n_rep, n, dh)
    per_item = torch.func.vmap(node)(q5s, dOs)
    for i in range(3):
        for a, b in zip(per_item, node(q5s[i], dOs[i]), strict=True):
            assert rel_err(a[i], b) < 1e-14


def test_blocked_core_vjp_vmapped_over_its_attention_inputs_goes_item_by_item():
    """The vmap rule's other branch: when the attention's own inputs vary along the vmapped axis (not an HVP's
    directions), each item is computed alone, and the result equals a loop over the items."""
    gen = torch.Generator().manual_seed(3)
    B, H_kv, n_rep, n, dh = 1, 2, 2, 5, 4

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    key, value, gK, gV = (rnd(B, H_kv, n, dh) for _ in range(4))
    dO, lse, delta = rnd(B, H_kv, n_rep, n, dh), rnd(B, H_kv, n_rep, n), rnd(B, H_kv, n_rep, n)
    blocks = core_module._row_blocks(None, n, n, 2)

    def vjp(q5, gQ):
        return core_module._BlockedCoreVJP.apply(q5, key, value, dO, lse, delta, None, gQ, gK, gV, 0.5, blocks)

    q5s, gQs = rnd(3, B, H_kv, n_rep, n, dh), rnd(3, B, H_kv, n_rep, n, dh)
    batched = torch.func.vmap(vjp)(q5s, gQs)
    for i in range(3):
        for a, b in zip(batched, vjp(q5s[i], gQs[i]), strict=True):
            assert rel_err(a[i], b) < 1e-14


def test_blocked_core_is_not_differentiated_three_times(monkeypatch):
    """A third derivative through the blocked core fails with a clear error instead of a wrong number."""
    q, k, v, allowed = make("gqa")
    force_blocked(monkeypatch, 2, *q.shape[:2], k.shape[-2])
    O = attention_core(q, k, v, allowed, 0.37, probs=False)[0]
    grads = torch.autograd.grad((O * O).sum(), (q, k, v), create_graph=True)
    hvp = torch.autograd.grad(grads, (q, k, v), tuple(torch.ones_like(g) for g in grads), create_graph=True)
    with pytest.raises(RuntimeError, match="twice, not three times"):
        torch.autograd.grad(sum(h.sum() for h in hvp), (q, k, v))


@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 0.1), (torch.float16, 0.01), (torch.float32, 1e-5)])
def test_blocked_core_in_low_precision_is_as_accurate_as_the_whole_core(dtype, bound, monkeypatch):
    """Models run in bf16/fp16: the blocked core's exp(S − lse) per block must not lose more than the
    whole-matrix core's softmax. Against float64 eager attention, values, gradients and HVPs of the blocked
    core in ``dtype`` stay within 2x the whole core's error in the same dtype (measured in bf16/fp16: 1.0–1.9x)
    or 50 units of round-off (float32, where both are ~1e-6 and their ratio is noise), and under ``bound``."""
    B, H, H_kv, n, dh = 1, 4, 2, 96, 16
    gen = torch.Generator().manual_seed(0)
    q64, k64, v64 = (2 * torch.randn(B, h, n, dh, generator=gen, dtype=torch.float64) for h in (H, H_kv, H_kv))
    allowed = causal_allowed(n, n)
    w64 = torch.randn(B, H, n, dh, generator=gen, dtype=torch.float64)
    dirs64 = tuple(torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in (q64, k64, v64))

    def outputs(fn, dt):
        q, k, v = (x.to(dt).requires_grad_(True) for x in (q64, k64, v64))
        O = fn(q, k, v)
        grads = torch.autograd.grad((w64.to(dt) * O * O).sum(), (q, k, v), create_graph=True)
        hvps = torch.autograd.grad(grads, (q, k, v), tuple(d.to(dt) for d in dirs64))
        return [x.double() for x in (O, *grads, *hvps)]

    exact = outputs(lambda q, k, v: eager(q, k, v, allowed, 0.25)[0], torch.float64)
    whole = outputs(lambda q, k, v: attention_core(q, k, v, allowed, 0.25)[0], dtype)
    force_blocked(monkeypatch, 8, B, H, n, dtype)
    blocked = outputs(lambda q, k, v: attention_core(q, k, v, allowed, 0.25, probs=False)[0], dtype)
    for name, b, w, e in zip(("O", "dq", "dk", "dv", "Hq", "Hk", "Hv"), blocked, whole, exact, strict=True):
        err_blocked, err_whole = rel_err(b, e), rel_err(w, e)
        assert err_blocked < bound, (name, err_blocked)
        assert err_blocked <= max(2 * err_whole, 50 * torch.finfo(dtype).eps), (name, err_blocked, err_whole)


@pytest.mark.parametrize("blocked", [True, False])
def test_blocked_core_saves_no_score_sized_tensor(blocked, monkeypatch):
    """Through the first backward with create_graph (what the HVPs hold), nothing of q×k floats is saved;
    the whole-matrix core, the control, saves P and more."""
    B, H, H_kv, n, dh = 1, 4, 2, 64, 4
    q, k, v = (torch.randn(B, h, n, dh, dtype=torch.float64, requires_grad=True) for h in (H, H_kv, H_kv))
    if blocked:
        force_blocked(monkeypatch, 5, B, H, n)
    saved = []

    def pack(t):
        saved.append(t.numel() if t.is_floating_point() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        O, _ = attention_core(q, k, v, None, 0.5, probs=not blocked)
        grads = torch.autograd.grad((O * O).sum(), (q, k, v), create_graph=True)
    scores = B * H * n * n
    assert (max(saved) < scores / 8) == blocked, saved
    torch.autograd.grad(grads, (q, k, v), tuple(torch.randn_like(g) for g in grads))  # the graph still works


CORE_MEMORY_CHILD = textwrap.dedent(
    """
    import sys, torch
    from heta_fast.hf import attention_core as core
    from heta_fast.profiling import reset_peak_rss, status_kib

    torch.set_num_threads(1)
    n, blocked = int(sys.argv[1]), sys.argv[2] == "1"
    core.BLOCKED_MIN_SCORES = 0 if blocked else float("inf")
    H, H_kv, dh = 9, 3, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, dh, generator=g).requires_grad_(True) for h in (H, H_kv, H_kv))
    w = torch.randn(1, H, n, dh, generator=g)
    dirs = tuple(torch.randn(1, *x.shape, generator=g) for x in (q, k, v))

    def graph_and_one_hvp():
        O, _ = core.attention_core(q, k, v, None, dh ** -0.5, probs=not blocked)
        grads = torch.autograd.grad((w * O * O).sum(), (q, k, v), create_graph=True)
        return torch.func.vmap(lambda *d: torch.autograd.grad(grads, (q, k, v), d, retain_graph=True))(*dirs)

    graph_and_one_hvp()  # warm up
    reset_peak_rss()
    base = status_kib("VmRSS")
    graph_and_one_hvp()
    print((status_kib("VmHWM") - base) * 1024)
    """
)


def core_peak_bytes(n: int, blocked: bool) -> int:
    """Peak resident bytes of one attention layer's second-order graph plus one HVP (default model's heads),
    in a fresh process whose malloc maps every large block (so the peak is live memory, as
    tests/gate/test_memory.py)."""
    return int(live_memory_child(CORE_MEMORY_CHILD, n, 1 if blocked else 0))


def test_graph_bytes_covers_the_blocked_core_measured_peak():
    """The budget the memory check uses for the blocked core (graph_bytes) covers its measured peak at the
    default model's attention shape at 2,048 tokens (measured 151 MB against 187 MB budgeted; the whole-matrix
    core's four score matrices alone would be 604 MB)."""
    n, H, dh = 2048, 9, 64
    budget = core_module.graph_bytes(n, n, H, dh, 1, torch.float32)
    assert budget < 4 * H * n * n * 4 / 3
    assert core_peak_bytes(n, blocked=True) <= budget
    # Control: the same measurement sees the whole-matrix core's score matrices (1,024 tokens: 151 MB of them).
    assert core_peak_bytes(1024, blocked=False) > 4 * H * 1024 * 1024 * 4


# ------------------------------------------------------------------------------------------------ routing
class Module(torch.nn.Module):
    is_causal = True
    layer_idx = 0


def _route(monkeypatch, *, grad, softcap=None, mask=None, plain=False):
    calls = []
    real = recording_attention.attention_core
    monkeypatch.setattr(recording_attention, "attention_core", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v, _ = make("gqa")
    with torch.set_grad_enabled(grad):
        if plain:
            with recording_attention.plain_attention():
                out, _ = recording_attention.heta_attention(Module(), q, k, v, mask, softcap=softcap)
        else:
            out, _ = recording_attention.heta_attention(Module(), q, k, v, mask, softcap=softcap)
    ref = eager(q, k, v, causal_allowed(5, 5), q.shape[-1] ** -0.5)[0].transpose(1, 2)
    if softcap is None:
        assert rel_err(out, ref) < 1e-12
    return bool(calls)


def test_graph_path_uses_the_core(monkeypatch):
    assert _route(monkeypatch, grad=True)
    assert _route(monkeypatch, grad=True, mask=causal_allowed(5, 5)[None, None].expand(2, 1, 5, 5))


def test_plain_attention_and_softcap_use_autograd(monkeypatch):
    assert not _route(monkeypatch, grad=True, plain=True)
    assert not _route(monkeypatch, grad=True, softcap=30.0)


def test_no_graph_no_probs_uses_sdpa(monkeypatch):
    assert not _route(monkeypatch, grad=False)


def test_reference_engine_never_uses_the_core(monkeypatch):
    from heta_fast.curvature import sensitivity_reference
    from heta_fast.gate import gate_reference
    from heta_fast.probes import draw_probes
    from heta_fast.testing import random_ids, tiny_model

    monkeypatch.setattr(recording_attention, "attention_core", lambda *a, **kw: pytest.fail("reference engine used the fast core"))
    adapter = ModelAdapter(tiny_model("llama").double())
    ids = random_ids(6)
    gate_reference(adapter, ids)
    sensitivity_reference(adapter, ids, 3, probes=draw_probes(6, 1, adapter.hidden_size, seed=0))


def test_long_graph_without_probs_uses_the_blocked_core(monkeypatch):
    """Over the threshold, a graph-building call takes the blocked core unless the recorder keeps probabilities."""
    monkeypatch.setattr(core_module, "BLOCKED_MIN_SCORES", 0)
    q, k, v, allowed = make("gqa")
    ref_O, ref_P = eager(q, k, v, allowed, q.shape[-1] ** -0.5)
    blocked = []
    real = core_module._row_blocks
    monkeypatch.setattr(core_module, "_row_blocks", lambda *a: blocked.append(1) or real(*a))
    out, _ = recording_attention.heta_attention(Module(), q, k, v, None)
    assert blocked and rel_err(out, ref_O.transpose(1, 2)) < 1e-12
    blocked.clear()
    rec = recording_attention.Recorder(keep_probs=True)
    with recording_attention.recording(rec):
        out, probs = recording_attention.heta_attention(Module(), q, k, v, None)
    assert not blocked and rel_err(probs, ref_P) < 1e-12 and rel_err(rec.layers[0].probs, ref_P[0]) < 1e-12
