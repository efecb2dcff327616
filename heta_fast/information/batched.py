"""The KL term I (SPEC §3, and §6 for units) for every mask in one batched pass.

Masking token i (or a unit a … b−1 of consecutive tokens) changes nothing before its first token, so the
keys and values of earlier positions are the clean run's. Masks are processed in chunks: the clean cache
is cut at the chunk's first position A and shared by the chunk (expanded as a view, never copied per mask:
:mod:`heta_fast.information.prefix_cache`), and only the suffix A … p is recomputed, one batch row per mask.
Only the final hidden state at p is kept; the LM head, softmax and KL are then fused in
:func:`heta_fast.information.kl_op.kl_from_hidden`, which streams the vocabulary and never forms a
``[rows, V]`` logits matrix. Work: about Σ_u (t − start_u) token-rows (t²/2 for single tokens) instead
of t per mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import MemoryBudgetError, NumericalError, UnsupportedModelError
from ..hf import CleanRun, ModelAdapter, cache_kwargs, clean_forward, head_check_tolerance, head_logits
from ..sharding import Shard, mine, summed
from ..units.ranges import Unit, check_units, token_units, unit_chunks
from .prefix_cache import shared_prefix_cache


def mask_row_bytes(adapter: ModelAdapter, t: int) -> int:
    """Bytes one mask row of the KL pass holds: its suffix (≤ t tokens) through one layer at a time.

    Measured on real layer shapes (tests/information/test_memory_budget.py): 1.4–1.7x below this.
    """
    elem = torch.finfo(adapter.dtype).bits // 8
    # One layer's keys and values at a time (prefix view + suffix, concatenated, GQA heads repeated):
    # the shared prefix cache is never copied per mask.
    kv = 2 * 2 * adapter.num_heads * adapter.head_dim
    # Attention scores: fused SDPA kernels never hold them, only the [q, k] mask, a byte per score on the CPU
    # and up to a float on CUDA (which turns a boolean mask into an additive one). Soft-capped attention runs
    # eagerly and holds every head's scores and float32 probabilities.
    if adapter.attention_softcap:
        score_bytes = 2 * adapter.num_heads * t * 4
    else:
        score_bytes = t * (1 if adapter.device.type == "cpu" else 4)
    # A gated MLP holds three of its rows at once (activation, up projection, their product).
    return t * ((8 * adapter.hidden_size + 3 * adapter.ffn_width + kv) * elem + score_bytes)


def mask_chunk_size(adapter: ModelAdapter, t: int, max_memory: int) -> int:
    """Tokens per chunk of masks: small enough to re-use most of the clean prefix, within ``max_memory``.

    A chunk [a, b) recomputes b − a suffixes of length t − a, so the rows computed are about
    t²/2 · (1 + chunk/t); chunks of t/16 keep that within 7 % of the t²/2 floor while each forward still
    carries (b − a)·(t − a) rows, enough for efficient matrix products.
    """
    per_row = mask_row_bytes(adapter, t)
    fit = max_memory // max(per_row, 1)
    if fit < 1:
        raise MemoryBudgetError(
            f"the KL pass over {t} tokens needs about {per_row / 2**20:.0f} MiB per masked token, more than "
            f"max_memory={max_memory / 2**20:.0f} MiB; raise max_memory or use window= (e.g. 512)"
        )
    return max(1, min(fit, -(-t // 16)))


def information_batched(
    adapter: ModelAdapter,
    ids: Tensor,
    mask_vec: Tensor,
    *,
    units: Sequence[Unit] | None = None,
    max_memory: int = 2 * 1024**3,
    backend: str = "auto",
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
    clean: CleanRun | None = None,
) -> Tensor:
    """I per unit: KL(π ‖ π^{(u)}) with every token of u masked at once (SPEC §6).

    Args:
        ids: context ids ``[t]``; the prediction position is t − 1.
        units: ``(start, end)`` ranges (ordered, disjoint; need not cover the context); None = every token.
    Returns:
        float32 ``[len(units)]`` (``[t]`` for tokens).
    """
    return information_multi(adapter, ids, [ids.numel() - 1], mask_vec, units=units, max_memory=max_memory,
                             backend=backend, chunk_size=chunk_size, progress=progress, shard=shard, clean=clean)[0]


def information_multi(
    adapter: ModelAdapter,
    ids: Tensor,
    predict_at: list[int],
    mask_vec: Tensor,
    *,
    units: Sequence[Unit] | None = None,
    max_memory: int = 2 * 1024**3,
    backend: str = "auto",
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
    clean: CleanRun | None = None,
) -> list[Tensor]:
    """I for several targets of one text in one masked pass.

    Target k is predicted at position ``predict_at[k]`` = p (its context is 0 … p). Masking a unit
    changes every later position, so one masked suffix run yields the hidden states at every p after
    the unit at once: all targets share the same rows instead of each redoing its own.

    Args:
        ids: token ids ``[n]`` with n > max(predict_at).
        predict_at: prediction positions, one per target.
        units: ``(start, end)`` ranges masked as a whole; None = every token of the longest context.
            Target k gets the units that lie inside its context (end ≤ p + 1), a prefix of the list.
        shard: split the chunks of masks over the ranks of a process group (:mod:`heta_fast.sharding`); every
            rank returns the whole result.
        clean: the clean forward over ``ids[:n]`` keeping ``predict_at`` (:func:`heta_fast.hf.clean_forward`), when
            the attribution already ran it (S shares it); without it, it is run here.
    Returns:
        one float32 tensor per target, in the order of ``predict_at``: ``[p + 1]`` for tokens, else one
        value per unit inside that target's context.
    """
    from .kl_op import kl_from_hidden

    base = adapter.model.base_model
    weight, bias, softcap = adapter.lm_head()
    n = max(predict_at) + 1
    units = token_units(n) if units is None else check_units(units, n)
    X = adapter.embed(ids[:n])
    scale = adapter.embed_scale
    span = chunk_size or mask_chunk_size(adapter, n, max_memory)  # fails before any forward if it cannot fit
    count = chunk_size or span
    with torch.no_grad():
        # One clean forward of the whole model fills the cache, yields the model's own logits at the
        # prediction positions and what its LM head received there.
        if clean is None:
            clean = clean_forward(adapter, X, predict_at)
        elif not clean.matches(X, predict_at, None):
            raise ValueError("the shared clean run was made for other ids or prediction positions")
        cache = clean.cache
        model_logits = clean.logits[predict_at.index(n - 1)]
        h_clean = clean.head_input  # [T, d]
        # The fused head must reproduce the model's own logits, or the KL would silently be wrong.
        z = head_logits(h_clean, weight, bias, softcap)
        if not torch.isfinite(model_logits).all():
            raise NumericalError("the model produced non-finite logits (NaN/Inf); check its weights and dtype")
        z_last = z[predict_at.index(n - 1)]
        tol = head_check_tolerance(z.dtype, 1e-3)
        if not torch.allclose(z_last.float(), model_logits.float(), rtol=tol, atol=tol * float(model_logits.abs().max())):
            raise UnsupportedModelError(
                "this model transforms its logits in a way heta_fast's fused LM head does not reproduce; "
                "use engine='reference'"
            )
        base_logp = torch.log_softmax(z.to(torch.promote_types(z.dtype, torch.float32)), -1)  # [T, V]
        inside = [sum(1 for _, b in units if b <= p + 1) for p in predict_at]  # units of each target's context
        I = [torch.zeros(k, dtype=torch.float32, device=X.device) for k in inside]
        positions = torch.arange(n, device=X.device)
        # With one target only the last row's hidden state is read: the last layer attends from that row alone.
        one_target = predict_at == [n - 1]
        chunks = unit_chunks(units, span, count)
        # With a shard, this rank's chunks only (a chunk costs its masks times its suffix rows); summed below.
        owned = mine(shard, [len(c) * (n - units[c[0]][0]) for c in chunks])
        for chunk, own in zip(chunks, owned, strict=True):
            if not own:
                continue
            a = units[chunk[0]][0]  # the chunk's clean prefix ends here
            n_masks = len(chunk)
            starts = torch.tensor([units[j][0] for j in chunk], device=X.device)[:, None]
            ends = torch.tensor([units[j][1] for j in chunk], device=X.device)[:, None]
            masked = (positions[None, a:] >= starts) & (positions[None, a:] < ends)  # [n_masks, n − a]
            suffix = torch.where(masked[..., None], mask_vec.to(X.dtype), X[a:])
            past = shared_prefix_cache(cache, a, n_masks) if a > 0 else None
            with adapter.last_row_only() if one_target else contextlib.nullcontext():
                hidden = base(inputs_embeds=suffix * scale, **cache_kwargs(base, past)).last_hidden_state
            for k, p in enumerate(predict_at):
                rows = [r for r, j in enumerate(chunk) if j < inside[k]]  # units inside this target's context
                if not rows:
                    continue
                lo, hi = chunk[rows[0]], chunk[rows[-1]] + 1
                I[k][lo:hi] = kl_from_hidden(hidden[rows[0] : rows[-1] + 1, p - a], weight, base_logp[k],
                                             bias=bias, softcap=softcap, backend=backend)
            if progress is not None:
                progress(n_masks)
    return [summed(shard, x) for x in I]
