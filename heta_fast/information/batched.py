"""The KL term I (SPEC §3) for every single-token mask in one batched pass.

Masking token i changes nothing before i, so the keys and values of positions < i are the clean run's.
Masks are processed in chunks [a, b): the clean cache is cut at a and shared by the chunk, and only the
suffix a … p is recomputed, one batch row per mask. Only the final hidden state at p is kept; the LM head,
softmax and KL are then fused in :func:`heta_fast.information.kl_op.kl_from_hidden`, which streams the vocabulary and
never forms a ``[rows, V]`` logits matrix. Work: about t²/2 token-rows instead of t² for the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import MemoryBudgetError, NumericalError, UnsupportedModelError
from ..hf import ModelAdapter, cache_kwargs, cut_cache, head_check_tolerance, head_logits, new_full_cache


def mask_chunk_size(adapter: ModelAdapter, t: int, max_memory: int) -> int:
    """Masks per chunk: small enough to re-use most of the clean prefix, within ``max_memory``.

    A chunk [a, b) recomputes b − a suffixes of length t − a, so the rows computed are about
    t²/2 · (1 + chunk/t); chunks of t/16 keep that within 7 % of the t²/2 floor while each forward still
    carries (b − a)·(t − a) rows, enough for efficient matrix products.
    """
    elem = torch.finfo(adapter.dtype).bits // 8
    kv = 2 * adapter.num_layers * adapter.num_kv_heads * adapter.head_dim
    # One mask row: its suffix (≤ t tokens) through one layer at a time, plus its copy of the prefix cache.
    per_row = t * (8 * adapter.hidden_size + 2 * adapter.ffn_width + 2 * adapter.num_heads * t + kv) * elem
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
    max_memory: int = 2 * 1024**3,
    backend: str = "auto",
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """I ``[t]``: KL(π ‖ π^{(i)}) for every context position i, sharing clean prefixes."""
    return information_multi(adapter, ids, [ids.numel() - 1], mask_vec, max_memory=max_memory, backend=backend,
                             chunk_size=chunk_size, progress=progress)[0]


def information_multi(
    adapter: ModelAdapter,
    ids: Tensor,
    predict_at: list[int],
    mask_vec: Tensor,
    *,
    max_memory: int = 2 * 1024**3,
    backend: str = "auto",
    chunk_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Tensor]:
    """I for several targets of one text in one masked pass.

    Target k is predicted at position ``predict_at[k]`` = p (its context is 0 … p). Masking token i
    changes every later position, so one masked suffix run yields the hidden states at every p ≥ i at
    once: all targets share the same ≈ n²/2 rows instead of each redoing its own.

    Args:
        ids: token ids ``[n]`` with n > max(predict_at).
        predict_at: prediction positions, one per target.
    Returns:
        one float32 tensor ``[p + 1]`` per target, in the order of ``predict_at``.
    """
    from .kl_op import kl_from_hidden

    base = adapter.model.base_model
    weight, bias, softcap = adapter.lm_head()
    n = max(predict_at) + 1
    X = adapter.embed(ids[:n])
    d = X.shape[1]
    scale = adapter.embed_scale
    ps = torch.tensor(predict_at, device=X.device)
    chunk = chunk_size or mask_chunk_size(adapter, n, max_memory)  # fails before any forward if it cannot fit
    with torch.no_grad():
        cache = new_full_cache()
        out = base(inputs_embeds=(X * scale)[None], **cache_kwargs(base, cache))
        h_clean = out.last_hidden_state[0, ps]  # [T, d]
        # The fused head must reproduce the model's own logits, or the KL would silently be wrong.
        model_logits = adapter.last_logits(X)
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
        I = [torch.empty(p + 1, dtype=torch.float32, device=X.device) for p in predict_at]
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            n_masks = b - a
            suffix = X[a:].expand(n_masks, n - a, d).clone()
            rows = torch.arange(n_masks, device=X.device)
            suffix[rows, rows] = mask_vec.to(X.dtype)  # mask i = a + r sits at suffix row r
            past = None
            if a > 0:
                past = cut_cache(cache, a)
                past.batch_repeat_interleave(n_masks)
            hidden = base(inputs_embeds=suffix * scale, **cache_kwargs(base, past)).last_hidden_state
            for k, p in enumerate(predict_at):
                if p < a:
                    continue
                hi = min(b, p + 1)  # masks i ≤ p belong to this target's context
                I[k][a:hi] = kl_from_hidden(hidden[: hi - a, p - a], weight, base_logp[k], bias=bias,
                                            softcap=softcap, backend=backend)
            if progress is not None:
                progress(n_masks)
    return I
