"""Faithfulness and plausibility metrics of SPEC.md §5, model-agnostic.

Every metric that needs the model takes a ``logprob_fn``: a callable mapping embedding rows
``X [B, t, d]`` to next-token log-probabilities at the last row ``[B, V]`` (float64). That keeps the
metrics testable on hand-made functions with known answers; :func:`model_logprob_fn` builds it for a
:class:`heta_fast.hf.ModelAdapter`.

Conventions: ``scores`` are per context token (positions 0 … t-1); larger = more important.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import HetaInputError

LogProbFn = Callable[[Tensor], Tensor]

AOPC_FRACTIONS = (0.1, 0.2, 0.3)


def _as_scores(scores, t: int | None = None) -> Tensor:
    a = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if a.numel() == 0:
        raise HetaInputError("empty attribution: there are no scores to evaluate")
    if not torch.isfinite(a).all():
        raise HetaInputError("the attribution has non-finite scores (NaN/Inf)")
    if t is not None and a.numel() != t:
        raise HetaInputError(f"{a.numel()} scores for a context of {t} tokens")
    return a


def model_logprob_fn(adapter, batch_size: int = 8) -> LogProbFn:
    """``X [B, t, d] -> log π [B, V]`` at the last row for a :class:`ModelAdapter`, in chunks of ``batch_size``."""

    def fn(X: Tensor) -> Tensor:
        X = X.to(adapter.dtype)
        outs = []
        with torch.no_grad():
            for i in range(0, X.shape[0], batch_size):
                logits = adapter.last_logits(X[i : i + batch_size])
                outs.append(torch.log_softmax(logits.to(torch.float64), -1))
        return torch.cat(outs)

    return fn


def minmax(scores) -> Tensor:
    """``s = (a - min a) / (max a - min a)``; a constant attribution gives all zeros (it prefers no token)."""
    a = _as_scores(scores)
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else torch.zeros_like(a)


# ------------------------------------------------------------------------------------------ soft erasure
def sqrt_prob_distance(logp_ref: Tensor, logp_new: Tensor) -> Tensor:
    """``D(π', π) = Σ_v (√π'_v − √π_v)² / √2`` (SPEC §5, as the ReAGent authors' released evaluator computes
    it): 0 when the distribution is unchanged, at most √2."""
    diff = torch.exp(0.5 * logp_new) - torch.exp(0.5 * logp_ref)
    return (diff**2).sum(-1) / math.sqrt(2.0)


def kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p ‖ q) over the last dimension, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def soft_erasure(
    logprob_fn: LogProbFn, X: Tensor, scores, *, seed: int = 0, samples: int = 4
) -> dict[str, float]:
    """Soft-NC and Soft-NS (Zhao & Aletras 2023) of one attribution, SPEC §5.

    Each embedding coordinate of token j is kept with probability ``k_j`` (Bernoulli with a generator
    seeded by ``seed``; the others are zeroed). Sufficiency keeps ``k = s``, comprehensiveness
    ``k = 1 - s``, with ``s`` the min-max normalised scores. The same uniform draws serve both, so the two
    masks are complementary coordinate by coordinate. Values are averaged over ``samples`` draws.

    Args:
        logprob_fn: ``X [B, t, d] -> log π [B, V]`` at the last row.
        X: the clean embedding rows ``[t, d]``.
        scores: the attribution ``[t]``.
        seed: seeds the Bernoulli draws (fixed, so every method sees the same draws).
        samples: number of Bernoulli draws averaged.

    Returns:
        ``soft_nc``, ``soft_ns`` (higher is better), and the raw ``soft_c``, ``soft_s`` and ``s0``.
        When the all-zero input leaves π unchanged (``1 - S_0 = 0``) the normalised values are NaN:
        no erasure can then be measured.
    """
    t, d = X.shape
    s = minmax(_as_scores(scores, t)).to(X.device)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(samples, t, d, generator=gen, dtype=torch.float64).to(X.device)
    keep_suff = (u < s[None, :, None]).to(X.dtype)
    keep_comp = (u < (1.0 - s)[None, :, None]).to(X.dtype)
    batch = torch.cat([X[None], torch.zeros_like(X)[None], X[None] * keep_suff, X[None] * keep_comp])
    logp = logprob_fn(batch)
    ref, allzero = logp[0], logp[1]
    suff, comp = logp[2 : 2 + samples], logp[2 + samples :]
    # One distance D for all three (SPEC §5 since 2026-12; before, Soft-S used the Hellinger norm and S_0 a KL).
    soft_s = 1.0 - float(sqrt_prob_distance(ref[None], suff).mean())
    soft_c = float(sqrt_prob_distance(ref[None], comp).mean())
    s0 = 1.0 - float(sqrt_prob_distance(ref, allzero))
    denom = 1.0 - s0
    if denom <= 1e-12:
        return {"soft_nc": float("nan"), "soft_ns": float("nan"), "soft_c": soft_c, "soft_s": soft_s, "s0": s0}
    return {
        "soft_nc": soft_c / denom,
        "soft_ns": max(soft_s - s0, 0.0) / denom,
        "soft_c": soft_c,
        "soft_s": soft_s,
        "s0": s0,
    }


# ------------------------------------------------------------------------------------- hard AOPC (ERASER)
def topk_count(t: int, fraction: float) -> int:
    """Number of tokens in the top ``fraction`` of a context of ``t`` (at least 1, at most t)."""
    return min(t, max(1, int(round(fraction * t))))


def ranking(scores) -> Tensor:
    """Positions by decreasing score; ties keep the earlier position first (stable, deterministic)."""
    a = _as_scores(scores)
    return torch.sort(-a, stable=True).indices


def aopc(
    logprob_fn: LogProbFn, X: Tensor, target_id: int, scores, *, fractions: Sequence[float] = AOPC_FRACTIONS
) -> dict[str, float]:
    """Hard comprehensiveness and sufficiency (DeYoung et al. 2020), averaged over ``fractions`` (AOPC).

    For each fraction f, the top ``k = round(f·t)`` tokens (at least one) are erased (rows set to zero)
    for comprehensiveness, or every other token is erased for sufficiency:
    ``comp_f = p(y|x) - p(y|x without top-k)`` (higher is better),
    ``suff_f = p(y|x) - p(y|top-k only)`` (lower is better); ``*_logp``: the same with log p.
    """
    t = X.shape[0]
    order = ranking(_as_scores(scores, t))
    rows = [X]
    for f in fractions:
        top = order[: topk_count(t, f)]
        comp = X.clone()
        comp[top] = 0
        suff = torch.zeros_like(X)
        suff[top] = X[top]
        rows += [comp, suff]
    lp = logprob_fn(torch.stack(rows))[:, target_id]
    out = {"p_target": float(lp[0].exp())}
    # Probabilities as ERASER; log-probabilities too, because a small model often gives the gold token a
    # probability so small (1e-6) that every probability difference is ~0 whatever the ranking.
    for suffix, v in (("", lp.exp()), ("_logp", lp)):
        comps = [float(v[0] - v[1 + 2 * j]) for j in range(len(fractions))]
        suffs = [float(v[0] - v[2 + 2 * j]) for j in range(len(fractions))]
        out["comprehensiveness" + suffix] = sum(comps) / len(comps)
        out["sufficiency" + suffix] = sum(suffs) / len(suffs)
    return out


# --------------------------------------------------------------------------------- segments (by offsets)
def token_span_mask(offsets: Sequence[tuple[int, int]], text: str, spans: Sequence[tuple[int, int]]) -> Tensor:
    """Which tokens lie in any of the character ``spans`` ``[start, end)`` of ``text``.

    A token belongs to a span when at least one non-whitespace character of the token is inside it, so a
    token that carries the space before a word (``" leaves"``) belongs to that word's span, and a token
    made of the space between two segments belongs to neither. Only offsets are used, never the token
    strings, so repeated words in other segments cannot be confused with the span's words.
    """
    out = torch.zeros(len(offsets), dtype=torch.bool)
    for i, (s, e) in enumerate(offsets):
        for a, b in spans:
            lo, hi = max(s, a), min(e, b)
            if lo < hi and text[lo:hi].strip():
                out[i] = True
                break
    return out


def mass_share(scores, mask: Tensor) -> float:
    """``Σ_{i in mask} â_i`` with ``â = a / Σ a`` (scores must be non-negative)."""
    a = _as_scores(scores)
    if (a < 0).any():
        raise HetaInputError("segment shares need non-negative scores; take magnitudes of signed attributions first")
    total = a.sum()
    if total <= 0:
        return 0.0
    return float(a[mask].sum() / total)


def dsa(scores, support_mask: Tensor, distractor_mask: Tensor) -> float:
    """Distractor-support attribution gap ``Σ_support â - Σ_distractor â`` in [−1, 1] (SPEC §5).

    Args:
        scores: non-negative attribution ``[t]``.
        support_mask, distractor_mask: boolean ``[t]`` token memberships from :func:`token_span_mask`.
    """
    a = _as_scores(scores)
    if support_mask.shape[0] != a.numel() or distractor_mask.shape[0] != a.numel():
        raise HetaInputError("segment masks and scores have different lengths")
    if (support_mask & distractor_mask).any():
        raise HetaInputError("a token is in both the support and the distractor segment")
    return mass_share(a, support_mask) - mass_share(a, distractor_mask)


def f1_alignment(scores, gold_mask: Tensor) -> float:
    """F1 of the top-k tokens against the gold tokens, with k = number of gold tokens (SPEC §5).

    Ties are broken towards earlier positions. With k = |gold|, precision = recall = F1; the value is still
    reported as F1 to match the paper's table.
    """
    a = _as_scores(scores)
    k = int(gold_mask.sum())
    if k == 0:
        raise HetaInputError("no gold tokens: F1 alignment is undefined")
    top = torch.zeros_like(gold_mask)
    top[ranking(a)[:k]] = True
    hits = int((top & gold_mask).sum())
    precision, recall = hits / k, hits / k
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------- stability
def rankdata(x: Tensor) -> Tensor:
    """Ranks 1 … n with ties given their average rank (as scipy.stats.rankdata)."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    order = torch.sort(x, stable=True).indices
    ranks = torch.empty_like(x)
    xs = x[order]
    i, n = 0, x.numel()
    while i < n:
        j = i
        while j + 1 < n and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation; NaN when either vector is constant (no ranking to compare)."""
    ra, rb = rankdata(torch.as_tensor(a)), rankdata(torch.as_tensor(b))
    if ra.numel() != rb.numel():
        raise HetaInputError("spearman: vectors of different lengths")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = ra.norm() * rb.norm()
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def embedding_noise(X: Tensor, *, relative_sigma: float = 0.01, seed: int = 0) -> Tensor:
    """Gaussian noise for X with standard deviation ``relative_sigma`` times the RMS of X's entries."""
    gen = torch.Generator().manual_seed(seed)
    sigma = relative_sigma * float(X.double().pow(2).mean().sqrt())
    return (torch.randn(X.shape, generator=gen, dtype=torch.float64) * sigma).to(X.dtype).to(X.device)


def mean_sem(values) -> tuple[float, float, int]:
    """Mean, standard error of the mean and count of ``values``, leaving out None and NaN (a metric a method could
    not give on an example); (nan, nan, 0) for none, a NaN error for one."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(vals)
    if not n:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n) if n > 1 else float("nan")
    return mean, sem, n
