"""Attention sinks: a dedicated sink token prepended to the input and left out of the attribution.

Decoder LMs park most attention of most heads on the first position ("attention sinks", Xiao et al.
2023). A tokenizer that prepends no BOS (SmolLM2's) makes the sink whatever the first word of the text is,
and HETA's gate M (attention–value flow) hands that word most of its mass: M ≈ 0.6 on the first word of
the curated set's passages, which belongs to the distractor (benchmarks/eval). With ``sink_token`` set,
a token the model saw at sequence starts during training is prepended, the model puts its sink there,
and position 0 is dropped from M (re-normalised over the real tokens), S and I before the score is
combined. Nothing is hidden: the mass the sink took is reported as ``Attribution.sink_gate_mass``.

A tokenizer that adds BOS (Llama, Gemma) puts the model's sink in place itself. With ``special_tokens="sink"``
(the default) such added special tokens are treated the same way (:func:`leading_special_count`): split off
the text, put in front of every window as the lead, left out of M, S and I.
"""

from __future__ import annotations

from .errors import HetaInputError

# Document separators / BOS tokens in the order they are tried (SmolLM2: <|endoftext|> = id 0).
SINK_CANDIDATES = ("<|endoftext|>", "<s>", "<|begin_of_text|>", "<bos>")


def default_sink_id(tokenizer) -> int:
    """A token the model saw at the start of training sequences: one of :data:`SINK_CANDIDATES` that is a
    special token of the tokenizer, else the tokenizer's BOS, else its EOS.

    Only special tokens count where the tokenizer lists them (``all_special_ids``): Gemma's vocabulary has an
    ordinary text piece ``<s>``, which is no sequence start.
    """
    if tokenizer is None:
        raise HetaInputError("sink_token='auto' needs a tokenizer: pass the sink's token id instead",
                             field="sink_token")
    vocab = tokenizer.get_vocab()
    listed = getattr(tokenizer, "all_special_ids", None)
    special = None if listed is None else {int(i) for i in listed}
    for name in SINK_CANDIDATES:
        if name in vocab and (special is None or int(vocab[name]) in special):
            return int(vocab[name])
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise HetaInputError("the tokenizer has no BOS/EOS/<|endoftext|> token: pass the sink's token id",
                         field="sink_token")


def resolve_sink(sink_token, tokenizer, vocab_size: int, first_id: int) -> int | None:
    """The sink's token id for the option ``sink_token``, or None for no sink.

    An id is used as given. ``"auto"`` (the default) means the tokenizer's sink token
    (:func:`default_sink_id`), except when there is nothing to add: no tokenizer (token-id input), a tokenizer
    without such a token, or an input that already begins with it (a tokenizer that adds BOS: the model's
    sink is then already in place, as a visible context token). The result's options record the outcome.
    """
    if sink_token is None:
        return None
    if sink_token == "auto":
        if tokenizer is None:
            return None
        try:
            sink = default_sink_id(tokenizer)
        except HetaInputError:
            return None
        # Input that already begins with the sink, or with the tokenizer's own BOS (Gemma's vocabulary also has
        # a "<s>" that is not its BOS): the model's sink is in place.
        return None if first_id in (sink, getattr(tokenizer, "bos_token_id", None)) else sink
    sink = int(sink_token)
    if not 0 <= sink < vocab_size:
        raise HetaInputError(f"sink_token {sink} is outside the model vocabulary (size {vocab_size})",
                             field="sink_token")
    return sink


def special_token_ids(tokenizer) -> set[int]:
    """The tokenizer's special token ids (``all_special_ids``, else its BOS/EOS/PAD/UNK ids)."""
    ids = getattr(tokenizer, "all_special_ids", None)
    if ids is None:
        ids = [getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")]
    return {int(i) for i in ids if i is not None}


def leading_special_count(ids: list[int], offsets: list[tuple[int, int]] | None, tokenizer) -> int:
    """How many tokens at the start of a tokenised input are special tokens the tokenizer added (a BOS).

    With character offsets (text input) a token counts when it is one of the tokenizer's special ids and
    covers no text (an empty span, as tokenizers report the tokens they add), so a special token the user
    wrote in the text stays visible. Without offsets (token-id input) the leading special ids count.
    """
    if tokenizer is None:
        return 0
    special = special_token_ids(tokenizer)
    k = 0
    while k < len(ids) and ids[k] in special and (offsets is None or offsets[k][0] == offsets[k][1]):
        k += 1
    return k
