"""Attention-sink treatment: give the model a dedicated sink token and leave it out of the attribution.

Decoder LMs park most attention of most heads on the first position ("attention sinks", Xiao et al.
2023). SmolLM2's tokenizer prepends no BOS, so the sink is whatever the first word of the text is, and
HETA's gate M (attention-value flow) hands that word most of its mass; on the curated set that word
belongs to the distractor. Prepending a real sink token (one the model saw at sequence starts during
training) lets the model put the sink there; the sink position is then dropped from M (M re-normalised
over the real tokens), S and I, and the score is recombined — nothing is hidden: the sink's gate mass is
reported in ``options["sink_gate_mass"]``.

Proposed library option (for the lead): ``Attributor.attribute(..., sink_token: int | "auto" | None = None)``:
``_encode`` prepends the id (offsets get a ``(0, 0)`` entry), ``_attribute_position`` runs unchanged on the
longer ids with ``t + 1`` and, before ``reference.combine``, drops index 0 of M/S/I (``M /= M.sum()``),
tokens, ids and offsets, and stores ``sink_token_id`` and ``sink_gate_mass`` in ``options``/the result.
:func:`attribute_with_sink` below is exactly that, outside the API.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import reference
from ..errors import HetaInputError
from ..result import Attribution

SINK_CANDIDATES = ("<|endoftext|>", "<s>", "<|begin_of_text|>", "<bos>")


def default_sink_id(tokenizer) -> int:
    """A token the model saw at the start of training sequences: ``<|endoftext|>`` (SmolLM2: id 0, the
    document separator of its pre-training stream), else the tokenizer's BOS, else its EOS."""
    if tokenizer is None:
        raise HetaInputError("no tokenizer: pass sink_token_id explicitly")
    vocab = tokenizer.get_vocab()
    for name in SINK_CANDIDATES:
        if name in vocab:
            return int(vocab[name])
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise HetaInputError("the tokenizer has no BOS/EOS/<|endoftext|> token: pass sink_token_id explicitly")


def drop_sink(attr: Attribution, *, beta: float, gamma: float, normalize: str) -> Attribution:
    """Remove position 0 (the sink) from a result computed with a prepended sink and recombine the score."""
    if attr.target_position < 2:
        raise HetaInputError("a sink-prefixed input needs at least one real context token")

    def tail(vals):
        return None if vals is None else torch.tensor(vals[1:], dtype=torch.float64)

    M, S, I = tail(attr.M), tail(attr.S), tail(attr.I)
    if M is not None:
        M = M / M.sum() if M.sum() > 0 else torch.full_like(M, 1.0 / M.numel())
    scores = reference.combine(M, S, I, beta, gamma, normalize)
    sink_mass = attr.M[0] if attr.M is not None else None
    options = {**attr.options, "sink_token_id": attr.token_ids[0], "sink_gate_mass": sink_mass}

    def as_list(x):
        return None if x is None else [float(v) for v in x.tolist()]

    return dataclasses.replace(
        attr,
        tokens=attr.tokens[1:],
        token_ids=attr.token_ids[1:],
        target_position=attr.target_position - 1,
        scores=as_list(scores),
        M=as_list(M),
        S=as_list(S),
        I=as_list(I),
        offsets=attr.offsets[1:] if attr.offsets is not None else None,
        options=options,
    )


def attribute_with_sink(attributor, text_or_ids, target: int | str | None = None, *,
                        sink_token_id: int | None = None, probes=None, **overrides) -> Attribution:
    """HETA with a sink token prepended and excluded from the result.

    Args:
        attributor: a :class:`heta_fast.Attributor`.
        text_or_ids: text (tokenised without special tokens) or context token ids, without the sink.
        target: None = the last token; an int = that position in the sink-free input; a string = a
            continuation whose first token is explained (teacher-forced).
        sink_token_id: the sink; default :func:`default_sink_id` of the tokenizer.
        probes: optional probes ``[t + 1, m, d]`` (the sink row included).
        **overrides: any :class:`~heta_fast.HetaOptions` field.

    Returns:
        An :class:`Attribution` over the real context tokens (positions and offsets of the sink-free
        input); ``options["sink_gate_mass"]`` is the gate mass the sink took before it was dropped.
    """
    tok = attributor.tokenizer
    offsets, text = None, None
    if isinstance(text_or_ids, str):
        if tok is None:
            raise HetaInputError("text input needs a tokenizer")
        enc = tok(text_or_ids, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets, text = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], text_or_ids
    else:
        ids = [int(x) for x in torch.as_tensor(text_or_ids).reshape(-1).tolist()]
    if isinstance(target, str):
        if tok is None:
            raise HetaInputError("a continuation string needs a tokenizer")
        cont = tok(target, add_special_tokens=False, return_offsets_mapping=True)
        if not cont["input_ids"]:
            raise HetaInputError("empty continuation: there is no target to explain")
        if offsets is not None:
            s, e = cont["offset_mapping"][0]
            offsets.append((s + len(text), e + len(text)))
            text = text + target
        ids.append(int(cont["input_ids"][0]))
        pos = len(ids) - 1
    else:
        n = len(ids)
        pos = n - 1 if target is None else (int(target) + n if int(target) < 0 else int(target))
        if not 1 <= pos <= n - 1:
            raise HetaInputError(f"target position {target} is out of range for {n} tokens (valid: 1 … {n - 1})")
    sink = default_sink_id(tok) if sink_token_id is None else int(sink_token_id)
    opts = attributor.options.replace(**overrides)
    raw = attributor.attribute([sink] + ids[: pos + 1], target=pos + 1, probes=probes, **overrides)
    raw = dataclasses.replace(
        raw,
        offsets=[(0, 0)] + offsets[:pos] if offsets is not None else None,
        text=text,
        tokens=[raw.tokens[0]] + ([text[s:e] for s, e in offsets[:pos]] if offsets is not None else raw.tokens[1:]),
        target_token=text[offsets[pos][0] : offsets[pos][1]] if offsets is not None else raw.target_token,
    )
    return drop_sink(raw, beta=opts.beta, gamma=opts.gamma, normalize=opts.normalize)
