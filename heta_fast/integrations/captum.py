"""Captum: HETA results as Captum's ``LLMAttributionResult``, so its plots (``plot_token_attr``,
``plot_seq_attr``) and helpers work on them. Used by :meth:`Attribution.to_captum` and
:meth:`AttributionSequence.to_captum`; Captum is imported only when a conversion runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import HetaInputError
from ..result import COMPONENT_NAMES, Attribution
from . import INSTALL_HINT


def _llm_attribution_result_class():
    try:
        from captum.attr import LLMAttributionResult
    except ImportError as e:
        raise ImportError(f"to_captum() needs Captum, which is not installed ({e}). Install the integrations "
                          f"extra: {INSTALL_HINT} (or: pip install captum)") from e
    return LLMAttributionResult


def _shared_context(results: Sequence[Attribution]) -> Attribution:
    """The result with the longest context, after checking every other context is a prefix of it."""
    longest = max(results, key=lambda r: len(r.token_ids))
    ids = longest.token_ids
    for r in results:
        n = len(r.token_ids)
        same_prefix = r.token_ids == ids[:n]
        target_in_place = n == len(ids) or ids[n] == r.target_id
        if not (same_prefix and target_in_place):
            raise HetaInputError(
                f"target {r.target_token!r} at position {r.target_position} does not belong to the same text as "
                f"the others: to_captum() needs the targets of one text (a continuation or generation)")
    return longest


def to_llm_attribution_result(results: Sequence[Attribution], by: str = "scores"):
    """Captum's ``LLMAttributionResult`` for one or more targets of one text.

    Args:
        results: the targets (one :class:`Attribution`, or the items of an :class:`AttributionSequence`).
        by: which values become the attributions: ``"scores"`` (default), ``"M"``, ``"S"`` or ``"I"``.

    Returns:
        ``LLMAttributionResult`` with ``input_tokens`` = the longest context (the prompt and the continuation
        before the last target), ``output_tokens`` = the targets, ``token_attr`` ``[targets, context]`` (0 where
        a context token comes at or after that target), ``seq_attr`` = ``token_attr`` summed over the targets,
        and ``output_probs`` = each target's probability (None if any result lacks its log-probability).
    """
    cls = _llm_attribution_result_class()
    if by not in COMPONENT_NAMES:
        raise HetaInputError(f"by={by!r}: choose one of {', '.join(COMPONENT_NAMES)}")
    if not results:
        raise HetaInputError("nothing to convert: the sequence has no targets")
    missing = [r.target_position for r in results if getattr(r, by) is None]
    if missing:
        raise HetaInputError(f"component {by!r} was not computed (targets at positions {missing})")
    context = _shared_context(results)
    token_attr = torch.zeros(len(results), len(context.tokens), dtype=torch.float64)
    for k, r in enumerate(results):
        token_attr[k, : len(r.tokens)] = torch.tensor(getattr(r, by), dtype=torch.float64)
    logprobs = [r.target_logprob for r in results]
    probs = None if any(lp is None for lp in logprobs) else torch.tensor([math.exp(lp) for lp in logprobs],
                                                                        dtype=torch.float64)
    return cls(input_tokens=list(context.tokens), output_tokens=[r.target_token for r in results],
               seq_attr=token_attr.sum(0), token_attr=token_attr, output_probs=probs)
