"""Convert the ReAGent authors' benchmark data into JSONL files (stdlib only, offline).

Usage
-----
    python benchmarks/eval/data/reagent/convert.py
        Reads the verbatim copies in raw/ (checked against the git blob hashes recorded in
        raw/SOURCE.json) and writes the *.jsonl files next to this script.

    python benchmarks/eval/data/reagent/convert.py --mirror /work/.mirror/casszhao+ReAGent/repo
        First refreshes raw/ from a bare git clone of github.com/casszhao/ReAGent (HEAD, or
        --commit SHA), then converts.

See README.md in this folder for the sources, licences and the schema of every output file.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAW = HERE / "raw"
REPO = "casszhao/ReAGent"

# raw file name -> path in the ReAGent repository (copied verbatim)
VERBATIM = {
    "annotated_lambada.json": "data/annotated_lambada.json",
    "tellmewhy2.txt": "data/benchmark/tellmewhy2.txt",
    "wikitext.txt": "data/benchmark/wikitext.txt",
    # LongRA templates; stored with a .txt suffix so nothing imports or lints it
    "data_utils.py.txt": "src/data/data_utils.py",
    "LICENSE.ReAGent": "LICENSE",
}

# LongRA: the per-model instance sets the authors actually rationalised and evaluated, read back
# from their committed rationalization results (one method folder per model; every method folder
# of a model holds the same instances).
LONGRA_DIRS = {
    "gpt2": "gpt2-medium",
    "gpt2_xl": "gpt2-xl",
    "gpt6b": "EleutherAI/gpt-j-6b",
    "OPT350M": "facebook/opt-350m",
    "OPT1B": "facebook/opt-1.3b",
    "OPT6B": "KoboldAI/OPT-6.7B-Erebus",
}
_LONGRA_ALT = "|".join(LONGRA_DIRS)
LONGRA_RE = re.compile(rf"^rationalization_results/analogies/({_LONGRA_ALT})_attention/[^/]+\.json$")
# TellMeWhy as evaluated (25 stories; the file that produced them is not in the repository)
TMW_EVAL_RE = re.compile(r"^evaluation_results/benchmark/(gpt2_ours|OPT350M_ours)/tellmewhy/(\d+)_output\.txt$")
EXTRACT = "results_extract.jsonl"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git(mirror: str, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", mirror, *args], check=True, capture_output=True).stdout


# ----------------------------------------------------------------------------------------------
# refresh raw/ from the mirror


def refresh_raw(mirror: str, commit: str | None) -> None:
    commit = git(mirror, "rev-parse", commit or "HEAD").decode().strip()
    RAW.mkdir(exist_ok=True)
    source = {"repository": f"https://github.com/{REPO}", "commit": commit, "files": {}}
    for name, path in VERBATIM.items():
        data = git(mirror, "show", f"{commit}:{path}")
        (RAW / name).write_bytes(data)
        source["files"][name] = {"path": path, "blob": git_blob_sha(data), "bytes": len(data)}

    listing = git(mirror, "ls-tree", "-r", commit).decode().splitlines()
    wanted = []
    for line in listing:
        meta, path = line.split("\t", 1)
        if LONGRA_RE.match(path) or TMW_EVAL_RE.match(path):
            wanted.append((path, meta.split()[2]))
    wanted.sort()
    with open(RAW / EXTRACT, "w", encoding="utf-8", newline="\n") as f:
        for path, blob in wanted:
            data = git(mirror, "cat-file", "blob", blob)
            assert git_blob_sha(data) == blob
            f.write(
                json.dumps({"path": path, "blob": blob, "content": data.decode("utf-8")}, ensure_ascii=False) + "\n"
            )
    ext = (RAW / EXTRACT).read_bytes()
    source["files"][EXTRACT] = {
        "path": "(verbatim blobs, see README)",
        "entries": len(wanted),
        "sha256": hashlib.sha256(ext).hexdigest(),
    }
    (RAW / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    print(f"raw/ refreshed from {mirror} at {commit} ({len(wanted)} result blobs)")


# ----------------------------------------------------------------------------------------------
# load + verify raw/


def load_raw() -> tuple[dict, dict[str, bytes], list[dict]]:
    source = json.loads((RAW / "SOURCE.json").read_text(encoding="utf-8"))
    files = {}
    for name in VERBATIM:
        data = (RAW / name).read_bytes()
        if git_blob_sha(data) != source["files"][name]["blob"]:
            sys.exit(f"raw/{name} does not match the blob recorded in raw/SOURCE.json")
        files[name] = data
    ext = (RAW / EXTRACT).read_bytes()
    if hashlib.sha256(ext).hexdigest() != source["files"][EXTRACT]["sha256"]:
        sys.exit(f"raw/{EXTRACT} does not match raw/SOURCE.json")
    entries = [json.loads(line) for line in ext.decode("utf-8").splitlines()]
    for e in entries:  # every entry is a verbatim git blob
        if git_blob_sha(e["content"].encode("utf-8")) != e["blob"]:
            sys.exit(f"{e['path']}: content does not match its git blob hash")
    return source, files, entries


# ----------------------------------------------------------------------------------------------
# converters


def lines_as_authors_read_them(data: bytes) -> list[str]:
    # src/sequence_rationalization.py: open(input_file, "r").read().splitlines()
    return data.decode("utf-8").splitlines()


def convert_lambada(data: bytes, report: dict) -> list[dict]:
    out, dropped = [], []
    for n, line in enumerate(data.decode("utf-8").splitlines()):
        r = json.loads(line)
        full = r["text"]
        # Vafa et al., huggingface/rationalize_annotated_lambada.py: the context is every
        # space-separated word but the last; the target is the last word.
        words = full.split(" ")
        context, target_word = " ".join(words[:-1]), words[-1]
        spans, rwords, problems = [], [], []
        for s, e in r["rationale"]:
            w = full[s:e]
            if not (0 <= s < e <= len(context)):
                problems.append(f"span {s}:{e} outside the context")
            elif context[s:e] != w or w != w.strip():
                problems.append(f"span {s}:{e} does not cover a clean word ({w!r})")
            elif (s > 0 and context[s - 1].isalnum()) or (e < len(context) and context[e].isalnum()):
                problems.append(f"span {s}:{e} ({w!r}) cuts a word")
            spans.append([s, e])
            rwords.append(w)
        if problems:
            dropped.append({"lambadaIndex": r["lambadaIndex"], "why": problems})
            continue
        out.append(
            {
                "id": f"lambada-{r['lambadaIndex']}",
                "lambada_index": r["lambadaIndex"],
                "text": context,
                "target_word": target_word,
                "target_text": " " + target_word,
                "rationale_spans": spans,
                "rationale_words": rwords,
                "full_text": full,
                "source_line": n,
            }
        )
    report["annotated_lambada"] = {
        "kept": len(out),
        "dropped": dropped,
        "rationale_spans": sum(len(o["rationale_spans"]) for o in out),
    }
    return out


def longra_templates(data_utils_src: bytes) -> dict[str, str]:
    """all_analogies['<type>']['template'] = (...) assignments, read with ast (nothing executed)."""
    tree = ast.parse(data_utils_src.decode("utf-8"))
    templates = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t = node.targets[0]
            if (
                isinstance(t, ast.Subscript)
                and isinstance(t.value, ast.Subscript)
                and ast.literal_eval(t.slice) == "template"
            ):
                templates[ast.literal_eval(t.value.slice)] = ast.literal_eval(node.value)
    return templates


def convert_longra(data_utils_src: bytes, entries: list[dict], report: dict) -> list[dict]:
    templates = longra_templates(data_utils_src)
    patterns = []
    for label, tpl in templates.items():
        tgt = "A" if tpl.index("[A]") > tpl.index("[B]") else "B"  # prepare_evaluation_analogy.py
        rel = "B" if tgt == "A" else "A"
        assert tpl.endswith(f"[{tgt}]") and tpl.count(f"[{rel}]") == 1
        prefix = tpl[: -len(f"[{tgt}]")]
        assert prefix.endswith(" ")
        rx = re.escape(prefix[:-1]).replace(re.escape(f"[{rel}]"), "(?P<rel>.+?)")
        # the context ends before the target token; for a target split into word pieces it also
        # holds the word's first piece(s) after the space
        rx = "^" + rx + "(?: (?P<piece>[^ ]+))?$"
        patterns.append((label, tpl, tgt, rel, re.compile(rx, re.S)))

    records: dict[tuple[str, str], dict] = {}
    unparsed = []
    for e in entries:
        m = LONGRA_RE.match(e["path"])
        if not m:
            continue
        model = LONGRA_DIRS[m.group(1)]
        r = json.loads(e["content"])
        toks = r["input-text"]
        bos = toks[0] == "</s>"  # OPT's tokenizer prepends </s>; it is not part of the text
        text = "".join(toks[1:] if bos else toks)
        target = r["target-text"]
        hits = [(p, p[-1].match(text)) for p in patterns]
        hits = [(p, mm) for p, mm in hits if mm]
        if len(hits) != 1:
            unparsed.append({"path": e["path"], "text": text, "target": target})
            continue
        (label, tpl, tgt, rel, _), mm = hits[0]
        piece = mm.group("piece") or ""
        if piece and target.startswith(" "):
            unparsed.append({"path": e["path"], "text": text, "target": target})
            continue
        target_word = piece + target.strip()
        rel_word = mm.group("rel")
        # rebuild the context from the template and check it is exactly what the model was fed
        filled = tpl.replace(f"[{rel}]", rel_word)
        context_rebuilt = filled[: -len(f" [{tgt}]")] + ((" " + piece) if piece else "")
        if context_rebuilt != text:
            unparsed.append({"path": e["path"], "text": text, "target": target})
            continue
        # the target is by construction the later placeholder, so the antecedent is the first
        # one and nothing before it is substituted: its offset in the text is the template's
        rel_start = tpl.index(f"[{rel}]")
        rel_span = [rel_start, rel_start + len(rel_word)]
        assert text[rel_span[0] : rel_span[1]] == rel_word
        d0 = text.index(" (") + 1
        d1 = text.index(").", d0) + 2
        key = (text, target)
        rec = records.get(key)
        if rec is None:
            rec = records[key] = {
                "id": None,
                "analogy_type": label,
                "text": text,
                "target_text": target,
                "target_word": target_word,
                "target_is_word_piece": bool(piece),
                "word_a": rel_word if rel == "A" else target_word,
                "word_b": rel_word if rel == "B" else target_word,
                "antecedent_word": rel_word,
                "rationale_spans": [rel_span],
                "rationale_words": [rel_word],
                "distractor_span": [d0, d1],
                "models": {},
            }
        assert model not in rec["models"], (model, e["path"])
        rec["models"][model] = {
            "authors_id": r["id"],
            "source": e["path"],
            "input_tokens": r["input-tokens"],
            "target_token": r["target-token"],
            "has_bos": bos,
        }
    order = {label: i for i, label in enumerate(templates)}
    out = sorted(records.values(), key=lambda x: (order[x["analogy_type"]], x["word_a"], x["word_b"], x["target_text"]))
    for i, rec in enumerate(out):
        rec["id"] = f"longra-{i:04d}"
        rec["models"] = dict(sorted(rec["models"].items()))
    per_model = {m: sum(m in r["models"] for r in out) for m in LONGRA_DIRS.values()}
    report["longra"] = {
        "kept": len(out),
        "per_model": per_model,
        "unparsed": unparsed,
        "word_piece_targets": sum(r["target_is_word_piece"] for r in out),
    }
    return out


WHY = re.compile(r"\bWhy\b[^?]*\?\s*$")


def convert_tellmewhy2(data: bytes, report: dict) -> list[dict]:
    out = []
    for i, line in enumerate(lines_as_authors_read_them(data)):
        m = WHY.search(line)
        rec = {"id": f"tellmewhy2-{i:02d}", "line": i, "text": line}
        if m:
            rec["question"] = line[m.start() :].rstrip()
            rec["question_span"] = [m.start(), m.start() + len(rec["question"])]
        out.append(rec)
    report["tellmewhy2"] = {"kept": len(out), "without_question": sum("question" not in r for r in out)}
    return out


def convert_wikitext(data: bytes, report: dict) -> list[dict]:
    out = [
        {"id": f"wikitext-{i:02d}", "line": i, "text": line} for i, line in enumerate(lines_as_authors_read_them(data))
    ]
    report["wikitext"] = {"kept": len(out)}
    return out


def convert_tellmewhy_evaluated(entries: list[dict], report: dict) -> list[dict]:
    prompt_re = re.compile(r"^(.*?\bWhy\b[^?]*\?)", re.S)
    by_item: dict[int, dict[str, str]] = {}
    for e in entries:
        m = TMW_EVAL_RE.match(e["path"])
        if m:
            s = e["content"]
            if s.startswith("</s>"):
                s = s[len("</s>") :]
            pm = prompt_re.match(s)
            by_item.setdefault(int(m.group(2)), {})[m.group(1)] = pm.group(1) if pm else None
    out, disagree = [], []
    for i in sorted(by_item):
        prompts = by_item[i]
        vals = set(prompts.values())
        if len(vals) != 1 or None in vals:
            disagree.append(i)
            continue
        out.append(
            {
                "id": f"tellmewhy-eval-{i:02d}",
                "authors_index": i,
                "text": vals.pop(),
                "reconstructed": True,
                "sources": [f"evaluation_results/benchmark/{d}/tellmewhy/{i}_output.txt" for d in sorted(prompts)],
            }
        )
    report["tellmewhy_evaluated"] = {"kept": len(out), "models_disagree_or_unparsed": disagree}
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", help="bare git dir of github.com/casszhao/ReAGent; refreshes raw/")
    ap.add_argument("--commit", help="commit to read from --mirror (default HEAD)")
    ap.add_argument("--out", default=str(HERE), help="output folder (default: this folder)")
    args = ap.parse_args()
    if args.mirror:
        refresh_raw(args.mirror, args.commit)
    source, files, entries = load_raw()
    out = Path(args.out)
    report: dict = {"repository": source["repository"], "commit": source["commit"]}
    outputs = {
        "annotated_lambada.jsonl": convert_lambada(files["annotated_lambada.json"], report),
        "longra.jsonl": convert_longra(files["data_utils.py.txt"], entries, report),
        "tellmewhy2.jsonl": convert_tellmewhy2(files["tellmewhy2.txt"], report),
        "tellmewhy_evaluated.jsonl": convert_tellmewhy_evaluated(entries, report),
        "wikitext.jsonl": convert_wikitext(files["wikitext.txt"], report),
    }
    for name, rows in outputs.items():
        write_jsonl(out / name, rows)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
