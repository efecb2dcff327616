"""Tokenizer helpers that need no tokenizer files: an offline character tokenizer and a text check."""

from __future__ import annotations

from .errors import HetaInputError


class CharTokenizer:
    """One token per character (ids 1..90, BOS 0), with character offsets: an offline stand-in tokenizer.

    It has the HuggingFace call signature heta_fast uses, so tests, ``--tiny-model`` runs and examples can
    use text without any tokenizer files.
    """

    bos_token_id = 0
    eos_token_id = None

    def get_vocab(self) -> dict[str, int]:
        return {"<s>": 0}

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        ids = [1 + (ord(c) % 90) for c in text]
        offsets = [(i, i + 1) for i in range(len(text))]
        if add_special_tokens:
            ids, offsets = [0] + ids, [(0, 0)] + offsets
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def decode(self, ids):
        return "".join(chr(32 + (i % 90)) for i in ids)


def check_text(text: str, field: str = "text") -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as JSON's ``"\\ud800"``) before a
    tokenizer sees it: HuggingFace's fast tokenizers fail on it with a TypeError.

    Raises:
        HetaInputError: naming ``field`` and the character position.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise HetaInputError(
            f"{field} is not valid Unicode: character {e.start} is a lone surrogate (U+{ord(text[e.start]):04X})",
            field=field,
        ) from None
