"""Shared benchmark helpers: machine description, timing, peak memory, CSV rows."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from heta_fast.cpu_allocator import release_free_memory

# HETA_BENCH_RESULTS redirects the CSVs (e.g. to $OUT on a lent GPU machine, merged back afterwards).
RESULTS_DIR = Path(os.environ.get("HETA_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def machine() -> str:
    """The CPU (or GPU) model, core count and torch version: printed with every table."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_avg() -> float:
    return os.getloadavg()[0]


def reset_peak_rss() -> None:
    """Make VmHWM equal the current RSS ("5" to clear_refs), so a later peak is this section's own.

    Free heap memory kept by heta_fast's malloc tuning is given back first, so the baseline does not
    include memory an earlier section freed (which this section could then reuse unseen).
    """
    release_free_memory()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(fn, repeats: int = 1):
    """(best seconds over ``repeats``, peak extra memory MiB over the calls, last result).

    Peak memory is resident (host) memory on the CPU and allocated GPU memory when CUDA is in use; GPU
    work is synchronised before each clock read.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    best = float("inf")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
        base = rss_mib()
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    if cuda:
        return best, (torch.cuda.max_memory_allocated() - base) / 2**20, out
    return best, peak_rss_mib() - base, out


MODEL_CHOICES = ["default", "smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b"]


def bench_model(name: str, device: str):
    """(model, context_ids(t) -> ids [t], label) for the default model or a random-weight real shape."""
    from heta_fast.models import load_model, random_model

    if name == "default":
        model, tok = load_model("default", device=device)

        def ids_fn(t):
            from bench_kl_pass import context_ids

            return context_ids(tok, t)

        label = "default model (SmolLM2-135M-Instruct)"
    else:
        model = random_model(name, device=device)
        vocab = model.config.vocab_size

        def ids_fn(t):
            return torch.randint(0, vocab, (t,), generator=torch.Generator().manual_seed(t))

        label = f"random-weight {name} shape"
    for p in model.parameters():
        p.requires_grad_(False)
    return model, ids_fn, label


def append_csv(name: str, rows: list[dict]) -> Path:
    """Append rows (with machine, commit and time stamped on each) to benchmarks/results/<name>.csv."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.csv"
    stamp = {"machine": machine(), "git_sha": git_sha(), "timestamp": dt.datetime.now().isoformat(timespec="seconds"),
             "load_avg": f"{load_avg():.1f}"}
    rows = [{**r, **stamp} for r in rows]
    fields = list(rows[0])
    old: list[dict] = []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            old_fields = list(reader.fieldnames or [])
            if old_fields == fields:
                old = None  # same columns: plain append
            else:  # new columns (e.g. model, device): rewrite with the union, old rows left blank there
                old = list(reader)
                fields = [c for c in fields if c not in old_fields] + old_fields
    if old is None:
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerows(rows)
        return path
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(old + rows)
    return path


def fresh_needle_case(attr, length: int) -> tuple[str, str, int]:
    """(prompt, target, context tokens): the haystack of ``length`` tokens around ``benchmarks/eval/needle.py``'s
    first fresh needle with its distractor, at depth 0.5, and the answer's first token as the target (the long-input
    case of the S benchmarks)."""
    import json
    import sys

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here / "eval"))
    import needle as nd

    needles = [json.loads(line) for line in (here / "eval/data/needles/fresh_needles.jsonl").read_text().splitlines()]
    prompt, _, _ = nd.build_case(attr, nd.documents(None), needles, 0, length, 0.5, True)
    tok = attr.tokenizer
    target = tok.decode([tok(needles[0]["answer"], add_special_tokens=False)["input_ids"][0]])
    return prompt, target, len(tok(prompt)["input_ids"])


def s_values(res) -> torch.Tensor:
    """A result's S in float64: its units' (those a level scored) or its tokens'."""
    return torch.tensor([u.S for u in res.units if u.S is not None] if res.units else res.S, dtype=torch.float64)
