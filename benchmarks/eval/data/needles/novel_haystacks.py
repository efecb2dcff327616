"""Haystacks of fiction for the needle harness: the annotated LAMBADA passages (novel excerpts) joined as
paragraphs, one rotation per document, written as plain-text files for ``needle.py --documents``.

A second document family beside the Python Language Reference (the harness's default): narrative prose full of
names, dialogue and short sentences, where a planted fact competes with many entity-like tokens. Passages from the
LAMBADA dataset (Paperno et al., 2016), CC BY 4.0, as converted in ``../reagent/annotated_lambada.jsonl``.

    python benchmarks/eval/data/needles/novel_haystacks.py --out /tmp/novels   # writes novels_0.txt … novels_5.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PASSAGES = Path(__file__).resolve().parents[1] / "reagent" / "annotated_lambada.jsonl"


def novel_documents(count: int = 6) -> list[str]:
    """``count`` documents, each every passage once (paragraphs), starting at evenly spaced passages."""
    passages = [json.loads(line)["full_text"].strip() for line in PASSAGES.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    step = len(passages) // count
    return ["\n\n".join(passages[i * step:] + passages[: i * step]) for i in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for novels_<i>.txt")
    ap.add_argument("--count", type=int, default=6)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(novel_documents(args.count)):
        (out / f"novels_{i}.txt").write_text(doc + "\n", encoding="utf-8")
        print(out / f"novels_{i}.txt", len(doc), "characters")


if __name__ == "__main__":
    main()
