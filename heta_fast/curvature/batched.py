"""Batched curvature–vector products for S (SPEC §2): activations shared by every probe, causality exploited.

Two ideas make the exact path fast:

* **One graph, many probes.** The first-order graph ∇g is built once (one forward, one backward with
  ``create_graph``) and a whole batch of probe directions goes through the second backward at once
  (``torch.func.vmap`` over ``autograd.grad``); no probe repeats the forward.
* **The LM head in closed form.** The head's gradient and Hessian with respect to the final hidden state are
  the same for every probe; they are formed once per target (:mod:`heta_fast.curvature.head`), so no batch of
  directions goes through the ``[V, d]`` output table.
* **Causal suffixes.** S_i needs only row i of H·P_i r. Token i influences positions ≥ i alone, so that row
  depends only on the suffix i … p with the clean keys/values of positions < i held fixed. Tokens are taken
  in chunks [a, b): the clean KV cache is cut at a, the graph is built on the suffix a … p only, and the
  chunk's probes run on t − a rows instead of t. That halves the work (about t²/2 rows instead of t²).

The low-rank path needs dense directions over all tokens, so it uses one full graph. The reference engine
(:mod:`heta_fast.curvature.reference`) does one full forward and double backward per probe instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import HetaInputError, MemoryBudgetError
from ..hf import (
    CleanRun,
    ModelAdapter,
    attention_core,  # the module: its threshold and block size are read at each call
    clean_forward,
    cut_cache,
)
from ..probes import check_probes, draw_range_finder
from ..sharding import Shard, mine, summed
from ..units.ranges import check_units, token_units, unit_chunks
from .head import HeadCurvature, clean_head_curvature, target_log_prob

# Floats per row and differentiated layer, as (× hidden size, × MLP width), measured on the default model
# (576, 1536) with the blocked attention core at 1,025–4,097 rows (benchmarks/RESULTS.md, issue 16): the
# first-order graph every direction shares kept 21–24 k floats per row and layer; one direction's second
# backward held 7.5–11 k more.
GRAPH_ROW_FLOATS = (24, 6)
DIRECTION_ROW_FLOATS = (12, 3)


# Floats per row (× hidden size) the final layer keeps: the graphs compute it for the prediction row only
# (ModelAdapter.last_row_only), so per row it holds its input, the normed input and the keys and values.
LAST_LAYER_ROW_FLOATS = 4


def _row_bytes(adapter: ModelAdapter, rows: int, n_layers: int, floats: tuple[int, int]) -> int:
    """Per-row bytes of ``n_layers`` differentiated layers, the final one of which runs for one row only."""
    elem = torch.finfo(adapter.dtype).bits // 8
    full = (n_layers - 1) * (floats[0] * adapter.hidden_size + floats[1] * adapter.ffn_width)
    return rows * (full + LAST_LAYER_ROW_FLOATS * adapter.hidden_size) * elem


def graph_bytes(adapter: ModelAdapter, rows: int, kv_len: int, layers: int | None = None) -> int:
    """Bytes of the first-order graph over ``rows`` positions (keys ``kv_len``) that every direction shares.

    Per differentiated layer (all, or the last ``layers``) and row: the saved activations of the forward and of
    the first backward (:data:`GRAPH_ROW_FLOATS`; the final layer, computed for one row, a few vectors); and the
    attention cores' share
    (:func:`heta_fast.hf.attention_core.graph_bytes`): four score rows per head (whole-matrix core), or four
    query-sized rows per head plus one layer's block temporaries (query-blocked core, long inputs).
    """
    n_layers = layers or adapter.num_layers
    # The final layer attends from one row: its scores are negligible.
    attention = attention_core.graph_bytes(rows, kv_len, adapter.num_heads, adapter.head_dim, max(1, n_layers - 1),
                                           adapter.dtype)
    return _row_bytes(adapter, rows, n_layers, GRAPH_ROW_FLOATS) + attention


def bytes_per_direction(adapter: ModelAdapter, rows: int, kv_len: int, layers: int | None = None) -> int:
    """Bytes one more direction of a batched second backward adds above the shared graph.

    Per layer and row a few hidden-size vectors and the MLP width (:data:`DIRECTION_ROW_FLOATS`); the
    whole-matrix attention core adds score-sized temporaries for the one layer whose second backward is running
    (the blocked core's blocks shrink as directions are added, so their bytes are in :func:`graph_bytes`).
    """
    n_layers = layers or adapter.num_layers
    attention = 0
    if not attention_core.uses_blocked_core(rows, kv_len):
        elem = torch.finfo(torch.promote_types(adapter.dtype, torch.float32)).bits // 8
        attention = attention_core.BLOCKED_TEMPORARIES * adapter.num_heads * rows * kv_len * elem
    return _row_bytes(adapter, rows, n_layers, DIRECTION_ROW_FLOATS) + attention


def curvature_bytes(adapter: ModelAdapter, rows: int, kv_len: int, layers: int | None, directions: int) -> int:
    """Peak activation bytes of one graph over ``rows`` positions with ``directions`` in one second backward."""
    return graph_bytes(adapter, rows, kv_len, layers) + directions * bytes_per_direction(adapter, rows, kv_len, layers)


def probe_batch_size(adapter: ModelAdapter, rows: int, kv_len: int, max_memory: int,
                     layers: int | None = None, *, suffix_graphs: bool = True) -> int:
    """Directions per batched backward within ``max_memory`` bytes (at least 1, else an error).

    Budgets the shared first-order graph once and each direction at its marginal cost. ``suffix_graphs``
    (exact S): graphs are also built on shorter suffixes of the context; above the blocked core's threshold the
    shortest of those that still take the whole-matrix core (q·kv_len at the threshold) is checked as well.
    On the CPU the directions of a batch run in slices (:func:`cpu_slice`), so this bound is conservative there.
    Called before any forward runs, so a context that cannot fit fails at once.
    """
    sizes = [rows]
    if suffix_graphs and attention_core.uses_blocked_core(rows, kv_len):
        sizes.append(max(1, min(rows, int(attention_core.BLOCKED_MIN_SCORES // kv_len))))
    fits = []  # directions that fit beside each graph
    for q in sizes:
        graph, per_dir = graph_bytes(adapter, q, kv_len, layers), bytes_per_direction(adapter, q, kv_len, layers)
        need = graph + per_dir
        if need > max_memory:
            raise MemoryBudgetError(
                f"the curvature graph over {rows} tokens and one Hessian–vector product through it need about "
                f"{need / 2**20:.0f} MiB, more than max_memory={max_memory / 2**20:.0f} MiB; raise max_memory or "
                "shorten the context with window= (e.g. window=512)"
                + ("" if layers else ", or differentiate only the last layers with layers= (e.g. 6)")
            )
        fits.append((max_memory - graph) // per_dir)
    # Directions per first-order graph: enough to amortise rebuilding it (exact path), capped on the CPU,
    # where the second backwards then run in slices of cpu_slice() directions anyway.
    cap = 64 if adapter.device.type == "cpu" else 256
    return max(1, min(cap, *fits))


# Rows (directions × suffix rows) per batched second backward on the CPU. On the default model the
# per-direction cost was lowest around 1,024 rows: 8 directions at 128 rows (0.34 s each, against 0.37 at
# 32), 64 at 16 rows (48 ms, against 62 at 8): the [B, s, ffn] temporaries stay in cache while the fixed
# cost per backward op is shared. On a GPU the whole batch goes at once.
# Suffixes whose graph takes the query-blocked attention core (from 512 rows; 1,024 until 2026-12-07) run two
# directions at a time: there that core dominates, and under vmap its direction-free work (P recomputed per block,
# dP, dS) is done once for both. 4,006-token needle, rank 8,
# last 6 layers, 2 threads: S in 87.9 s against 100.0 s one direction at a time (benchmarks/eval/README.md); four at a
# time was slower again (123.7 s against 97.9 s for two, one process, 2026-12-06; likely its larger blocked
# temporaries outgrow the cache). With the blocked core's hand-batched second backward (its directions as columns
# against each score block) two stay the fastest: whole low-rank S at 4,006 tokens 81.4 s with 2, 96.4 with 4, 108.4
# with 8 (one process on a 2-core Intel Xeon, 2026-12-07, the second of two rounds; the first, warming up: 98.0,
# 98.1, 112.0).
CPU_SLICE_ROWS = 1024
CPU_SLICE_MAX = 64
CPU_SLICE_LONG = 2


def cpu_slice(rows: int) -> int:
    """Directions per batched second backward on the CPU for a suffix of ``rows`` positions: two where its graph
    takes the blocked attention core (from 512 rows; benchmarks/RESULTS.md, *The blocked core from 512 rows*)."""
    if rows > CPU_SLICE_ROWS or attention_core.uses_blocked_core(rows, rows):
        return CPU_SLICE_LONG
    return max(1, min(CPU_SLICE_MAX, CPU_SLICE_ROWS // max(rows, 1)))


def batched_vjp(output: Tensor, inputs: Tensor, cotangents: Tensor) -> Tensor:
    """``[B, ...]``: the VJP of ``output`` w.r.t. ``inputs`` for each of B cotangents, the graph kept.

    ``torch.func.vmap`` rather than ``autograd.grad(is_grads_batched=True)``: the latter uses the legacy
    vmap, which runs batched matmuls with more than three dimensions (attention) one direction at a time.
    """
    return torch.func.vmap(lambda c: torch.autograd.grad(output, inputs, c, retain_graph=True)[0])(cotangents)


class CurvatureOperator:
    """C·V for batches of directions V ``[B, s, d]`` over the suffix a … p (s = t − a rows).

    C is the Hessian of g = log π[target] or the Gauss–Newton matrix, with respect to the differentiated
    variable (X, or the residual entering layer L−k) on the suffix; positions < a are held at their clean
    values through the cut KV cache. With ``head`` (the LM head's derivatives at the clean final hidden state),
    the graph ends at that hidden state and the head's part is one ``[d, d]`` product per direction.
    """

    def __init__(self, adapter: ModelAdapter, X: Tensor, point: Tensor, target_id: int, curvature: str,
                 *, start: int = 0, cache=None, layer: int | None = None, head: HeadCurvature | None = None):
        if curvature not in ("hessian", "gauss_newton"):
            raise HetaInputError(f"unknown curvature {curvature!r}")
        self.adapter = adapter
        self.curvature = curvature
        self.x = point[start:].detach().clone().requires_grad_(True)
        past = cut_cache(cache, start) if start > 0 else None
        swap = None if layer is None else (layer, self.x)
        x_in = X[start:] if layer is not None else self.x
        # Only the prediction position's final hidden state is read: the last layer attends from that row alone.
        with adapter.head_input() as seen, adapter.last_row_only():
            z = adapter.forward(x_in, past_key_values=past, replace_layer_input=swap).logits[0, -1]
        self.head = head if seen else None
        # Differentiate from the final hidden state h (head in closed form) or from the logits z (autograd).
        out = seen[-1][0, -1] if self.head is not None else z
        if curvature == "hessian":
            g = torch.log_softmax(z.float(), -1)[target_id]
            if self.head is not None:
                g = target_log_prob(out, g, self.head)
            (self.grad,) = torch.autograd.grad(g, self.x, create_graph=True)
        else:
            # G = Jᵀ C J with J = ∂out/∂x; C is the head's Fisher matrix (h) or diag π − π πᵀ (z).
            self.out = out
            if self.head is None:
                self.pi = torch.softmax(z.detach().float(), -1)  # float32: the softmax and its products below
            self.u0 = torch.zeros_like(out, requires_grad=True)
            (self.jt,) = torch.autograd.grad(out, self.x, self.u0, create_graph=True)

    def __call__(self, V: Tensor, progress: Callable[[int], None] | None = None) -> Tensor:
        """C·V; ``progress(n)`` after each batched second backward of n directions (a slice on the CPU)."""
        step = cpu_slice(V.shape[1]) if V.device.type == "cpu" else V.shape[0]
        out = []
        for lo in range(0, V.shape[0], step):
            out.append(self._apply(V[lo : lo + step]))
            if progress is not None:  # between slices: where a caller's should_stop can end the run
                progress(out[-1].shape[0])
        return out[0] if len(out) == 1 else torch.cat(out)

    def _apply(self, V: Tensor) -> Tensor:
        if self.curvature == "hessian":
            return batched_vjp(self.grad, self.x, V)
        # Gauss–Newton: J V (double-vjp trick), then the head's curvature C and Jᵀ, all batched.
        JV = batched_vjp(self.jt, self.u0, V)
        if self.head is not None:
            W = (JV.to(self.head.fisher.dtype) @ self.head.fisher).to(JV.dtype)
        else:
            pi, JV32 = self.pi.to(torch.promote_types(JV.dtype, torch.float32)), JV.to(self.pi.dtype)
            W = (pi * JV32 - pi * (JV32 @ pi)[:, None]).to(JV.dtype)
        return batched_vjp(self.out, self.x, W)


def clean_state(adapter: ModelAdapter, ids: Tensor, layers: int | None, target_id: int, clean: CleanRun | None = None):
    """X, the differentiated point (X or the residual at L−k), its layer index, the clean KV cache, and the
    LM head's derivatives at the clean final hidden state (None where the fused head cannot stand in).

    ``clean``: the clean forward over ``ids`` already run for this attribution (shared with the KL pass);
    without it one is run here."""
    X = adapter.embed(ids).detach()
    layer = None if layers is None else adapter.first_layer(layers)
    keep = [ids.numel() - 1]
    if clean is None:
        clean = clean_forward(adapter, X, keep, layer)
    elif not clean.matches(X, keep, layer):
        raise ValueError("the shared clean run was made for other ids, positions or layers")
    point = X if layer is None else clean.layer_input.detach()
    head = (clean_head_curvature(adapter, clean.head_input[-1], clean.logits[-1], target_id)
            if clean.head_input is not None else None)
    return X, point, layer, clean.cache, head


def sensitivity_batched(
    adapter: ModelAdapter,
    ids: Tensor,
    target_id: int,
    *,
    probes: Tensor,
    units: Sequence[tuple[int, int]] | None = None,
    hessian: str = "exact",
    rank: int = 64,
    lowrank_passes: int = 2,
    curvature: str = "hessian",
    layers: int | None = None,
    seed: int = 0,
    max_memory: int = 2 * 1024**3,
    progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
    clean: CleanRun | None = None,
) -> Tensor:
    """S per unit (SPEC §6; per token, SPEC §2, when ``units`` is None); equal probes give the reference
    engine's S (up to floating-point error).

    Args:
        ids: context ids ``[t]``; the prediction position is t − 1.
        probes: Rademacher probes ``[t, m, d]`` (see :func:`heta_fast.probes.draw_probes`); a unit's probe k
            stacks the probes k of its tokens.
        units: ``(start, end)`` ranges (ordered, disjoint; need not cover the context); None = every token.
        lowrank_passes: 2 (``B = Qᵀ C Q``, 2·rank products) or 1 (single pass, rank products).
        max_memory: bytes of activations the batched backwards may hold (sets the batch size).
        shard: split the work over the ranks of a process group (:mod:`heta_fast.sharding`); every rank returns
            the whole result.
        clean: the attribution's clean forward over ``ids`` (:func:`heta_fast.hf.clean_forward`), if already run.
    Returns:
        ``[len(units)]`` (``[t]`` for tokens), in the model's dtype.
    """
    t = ids.numel()
    units = token_units(t) if units is None else check_units(units, t)
    if hessian == "lowrank":
        return lowrank_curvature(adapter, ids, target_id, probes=probes, rank=rank, lowrank_passes=lowrank_passes,
                                 curvature=curvature, layers=layers, seed=seed, max_memory=max_memory,
                                 progress=progress, shard=shard, clean=clean).unit_norms(units)
    if hessian != "exact":
        raise HetaInputError(f"unknown hessian mode {hessian!r}")
    # Fail before any forward if it cannot fit.
    batch = probe_batch_size(adapter, t, t, max_memory, layers)
    X, point, layer, cache, head = clean_state(adapter, ids, layers, target_id, clean)
    d = point.shape[1]
    check_probes(probes, t, d)
    probes = probes.to(point)
    m = probes.shape[1]
    dev = point.device
    U = len(units)
    # Products run in the model's dtype; S accumulates in float32 or better.
    acc = torch.promote_types(point.dtype, torch.float32)

    # Exact S: every (unit, probe) block HVP.
    S = torch.zeros(U, dtype=acc, device=dev)
    # Chunks of units sharing one first-order graph: enough probes to fill about one batch, never more
    # than t/4 tokens from the chunk's start (for single tokens: chunks of that many tokens).
    per_graph = max(1, -(-batch // m))
    chunks = unit_chunks(units, max(1, min(t // 4, per_graph)), per_graph)
    owned = mine(shard, [len(c) * (t - units[c[0]][0]) for c in chunks])  # with a shard: this rank's chunks
    for chunk, own in zip(chunks, owned, strict=True):
        if not own:
            continue
        a = units[chunk[0]][0]
        op = CurvatureOperator(adapter, X, point, target_id, curvature, start=a, cache=cache, layer=layer,
                               head=head)
        pos = torch.arange(a, t, device=dev)
        pairs = [(j, k) for j in chunk for k in range(m)]  # (unit, probe) order, as the probes were drawn
        for lo in range(0, len(pairs), batch):
            part = pairs[lo : lo + batch]
            js = torch.tensor([j for j, _ in part], device=dev)
            ks = torch.tensor([k for _, k in part], device=dev)
            starts = torch.tensor([units[j][0] for j, _ in part], device=dev)[:, None]
            ends = torch.tensor([units[j][1] for j, _ in part], device=dev)[:, None]
            rows = ((pos[None] >= starts) & (pos[None] < ends)).to(point.dtype)  # [B, s]: the unit's rows
            V = probes[a:, :][:, ks].transpose(0, 1) * rows[..., None]  # [B, s, d]: P_u R_u[k]
            HV = op(V, progress)  # progress(n) after each slice: where a caller's should_stop can end the run
            S.index_add_(0, js, (HV.to(acc).abs().sum(-1) * rows.to(acc)).sum(-1))
            del V, HV
        del op
    return summed(shard, S) / m


def lowrank_curvature(adapter: ModelAdapter, ids: Tensor, target_id: int, *, probes: Tensor | None, rank: int = 64,
                      lowrank_passes: int = 2, curvature: str = "hessian", layers: int | None = None, seed: int = 0,
                      max_memory: int = 2 * 1024**3, progress: Callable[[int], None] | None = None,
                      shard: Shard | None = None, clean: CleanRun | None = None) -> LowRankCurvature:
    """The low-rank factors of the context's curvature (``hessian="lowrank"``), built once: S of any units is then
    read from them (:meth:`LowRankCurvature.unit_norms`) without another Hessian–vector product. The levels of
    SPEC §6 and a token refinement read all their units from one factorisation. ``probes`` None: given to
    :meth:`LowRankCurvature.unit_norms` instead (then they need not exist while the products run)."""
    t = ids.numel()
    batch = probe_batch_size(adapter, t, t, max_memory, layers, suffix_graphs=False)
    X, point, layer, _, head = clean_state(adapter, ids, layers, target_id, clean)
    if probes is not None:
        check_probes(probes, t, point.shape[1])
    return LowRankCurvature(adapter, X, point, layer, head, target_id, probes, rank=rank, passes=lowrank_passes,
                            curvature=curvature, seed=seed, batch=batch, progress=progress, shard=shard)


class LowRankCurvature:
    """``C ≈ Q B Qᵀ`` from a randomized range finder (Halko et al.): ``Y = C Ω``, ``Q = orth(Y)``, and
    ``B = Qᵀ C Q`` (two passes) or ``sym((QᵀY)(QᵀΩ)⁺)`` (one pass, SPEC §2); with the probes, in float32 or better."""

    def __init__(self, adapter, X, point, layer, head, target_id, probes, *, rank, passes, curvature, seed, batch,
                 progress, shard=None):
        t, d = point.shape
        acc = torch.promote_types(point.dtype, torch.float32)
        op = CurvatureOperator(adapter, X, point, target_id, curvature, layer=layer, head=head)

        def apply_all(directions: Tensor) -> Tensor:  # [N, t, d] -> [N, t, d] in acc
            starts = list(range(0, directions.shape[0], batch))
            owned = mine(shard, [1.0] * len(starts))  # with a shard: this rank's batches, zeros for the others'
            out = []
            for lo, own in zip(starts, owned, strict=True):
                part = directions[lo : lo + batch]
                out.append(op(part.to(point.dtype), progress).to(acc) if own else part.new_zeros(part.shape, dtype=acc))
            return summed(shard, torch.cat(out))

        omega = draw_range_finder(t, d, rank, seed).to(device=point.device, dtype=acc)
        Y = apply_all(omega.T.reshape(rank, t, d)).reshape(rank, t * d).T
        Q, _ = torch.linalg.qr(Y)
        self.B = lowrank_core(Q, Y, omega, lambda Qm: apply_all(Qm.T.reshape(-1, t, d)).reshape(-1, t * d).T,
                              passes)
        self.Qb = Q.reshape(t, d, -1)
        self.probes = None if probes is None else probes.to(device=point.device, dtype=acc)

    def unit_norms(self, units: Sequence[tuple[int, int]] | None = None, probes: Tensor | None = None) -> Tensor:
        """S of ``units`` (``(start, end)`` ranges, ordered, disjoint; None = every token) from the factors, with
        ``probes`` (``[t, m, d]``) or, if None, those given at construction."""
        t, d = self.Qb.shape[:2]
        units = token_units(t) if units is None else check_units(units, t)
        if probes is None:
            if self.probes is None:
                raise ValueError("no probes: give them to lowrank_curvature or to unit_norms")
            probes = self.probes
        else:
            check_probes(probes, t, d)
            probes = probes.to(device=self.Qb.device, dtype=self.Qb.dtype)
        return lowrank_unit_norms(self.Qb, self.B, probes, units)


def lowrank_core(Q: Tensor, Y: Tensor, omega: Tensor, apply: Callable[[Tensor], Tensor], passes: int) -> Tensor:
    """B with C ≈ Q B Qᵀ, symmetric: ``Qᵀ (C Q)`` (passes=2) or ``(QᵀY)(QᵀΩ)⁺`` (passes=1, Halko et al. §5.5)."""
    if passes == 2:
        B = Q.T @ apply(Q)
    elif passes == 1:
        B = (Q.T @ Y) @ torch.linalg.pinv(Q.T @ omega)
    else:
        raise HetaInputError(f"lowrank_passes must be 1 or 2, got {passes}")
    return 0.5 * (B + B.T)


def lowrank_unit_norms(Qb: Tensor, B: Tensor, probes: Tensor, units: Sequence[tuple[int, int]]) -> Tensor:
    """(1/m) Σ_k ‖Q_u B Q_uᵀ R_u[k]‖_1 per unit from the factors (``Qb [t, d, k]``: token i's rows of Q).

    ``Q_uᵀ R_u[k]`` is the sum of the tokens' ``Q_iᵀ r_ik``, so the cost is that of the token level
    (O(t·m·d·k)), whatever the number of units.
    """
    t = Qb.shape[0]
    owner = torch.full((t,), -1, dtype=torch.long, device=Qb.device)
    for j, (a, b) in enumerate(units):
        owner[a:b] = j
    keep = owner >= 0  # tokens outside every unit (a refinement's subset) take no part
    Qk, own = Qb[keep], owner[keep]
    coeff = torch.einsum("tdk,tmd->tmk", Qk, probes[keep])  # Q_iᵀ r_ik
    unit_coeff = coeff.new_zeros(len(units), *coeff.shape[1:]).index_add_(0, own, coeff)  # Q_uᵀ R_u[k]
    rows = torch.einsum("tdk,kj,tmj->tmd", Qk, B, unit_coeff[own])  # Q_i B Q_uᵀ R_u[k], i ∈ u
    norms = rows.abs().sum(-1)  # [t_kept, m]
    return norms.new_zeros(len(units), norms.shape[1]).index_add_(0, own, norms).mean(1)
