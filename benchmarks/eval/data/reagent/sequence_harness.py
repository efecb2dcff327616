"""The ReAGent authors' sequence-level protocol (WikiText, TellMeWhy) as harness examples, for one model.

    python benchmarks/eval/data/reagent/sequence_harness.py --data benchmarks/eval/data/reagent/wikitext.jsonl \
        --out benchmarks/eval/wikitext_smollm2/examples.jsonl [--model default] [--new-tokens 10] [--stride 2]

then ``heta-fast eval curated --data <out> --out <folder> --targets greedy ...``.

Their `src/sequence_rationalization.py` generates ``--max_new_tokens 10`` tokens greedily after each prompt, makes
every generated token a target attributed over the prompt and the tokens generated before it, and scores Soft-NS
and Soft-NC at every ``--stride``-th (2) generated position from the first, averaged per prompt (README.md beside
this file, *How the authors' evaluation uses each benchmark*). Here the model generates greedily from the prompt's
tokens, and each scored step k (0, 2, 4, …) becomes one example: the prompt followed by the first k generated
tokens as ``text``, no cue, ``"unlabelled": true`` (no segments: faithfulness metrics only); run with
``--targets greedy`` the harness explains the model's own next token after that text, which is generated token k.

The harness tokenises ``text`` afresh, so each example records whether that gives back exactly the prompt's tokens
and the k generated ones (``round_trip``); where it does not (a generated piece that the tokenizer merges
differently), the example still explains the model's own next token after the text, which may then differ from
the token the generation produced (``target_token`` is the generated one). ``prompt_id`` and ``step`` let a report
average per prompt, as the authors do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def sequence_examples(attributor, rec: dict, new_tokens: int, stride: int) -> list[dict]:
    """The harness examples of one prompt record (``id``, ``text``): one per scored generated position."""
    text, tokenizer = rec["text"], attributor.tokenizer
    ids = list(tokenizer(text)["input_ids"])  # as the harness encodes it (a BOS included)
    generated = attributor._generate(torch.tensor(ids), new_tokens)  # the library's greedy continuation
    rows = []
    for k in range(0, new_tokens, stride):
        text_k = text + tokenizer.decode(generated[:k])
        token = tokenizer.decode([generated[k]])
        rows.append({
            "id": f"{rec['id']}/step{k}",
            "text": text_k,
            # Only the gold target reads `answer`; the protocol's target is the greedy one (--targets greedy).
            "answer": token.strip() or json.dumps(token),
            "cue": "",
            "unlabelled": True,
            "prompt_id": rec["id"],
            "step": k,
            "target_token": token,
            "round_trip": list(tokenizer(text_k)["input_ids"]) == ids + generated[:k],
            "generated": tokenizer.decode(generated),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="wikitext.jsonl or tellmewhy*.jsonl (records with id and text)")
    ap.add_argument("--out", required=True, help="the examples file to write")
    ap.add_argument("--model", default="default")
    ap.add_argument("--new-tokens", type=int, default=10, help="tokens generated per prompt (the authors': 10)")
    ap.add_argument("--stride", type=int, default=2, help="score every stride-th generated position (theirs: 2)")
    args = ap.parse_args()
    from heta_fast import Attributor

    attr = Attributor.from_pretrained(args.model, progress=False)
    records = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line]
    rows = [row for rec in records for row in sequence_examples(attr, rec, args.new_tokens, args.stride)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    kept = sum(r["round_trip"] for r in rows)
    print(f"wrote {out}: {len(rows)} examples from {len(records)} prompts; {kept} re-tokenise to the generated ids")


if __name__ == "__main__":
    main()
