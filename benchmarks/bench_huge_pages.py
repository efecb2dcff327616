"""Transparent huge pages for torch's large CPU blocks (issue 31): whole S with ``THP_MEM_ALLOC_ENABLE`` 1 and 0.

    python benchmarks/bench_huge_pages.py [--tokens 4000] [--rounds 2] [--runs 2] [--threads 2] [--model default]

torch reads ``THP_MEM_ALLOC_ENABLE`` once per process, so each setting runs in processes of its own, alternating
``--rounds`` times (off, on, off, on …). Each process times whole S of the ``document`` preset
(``components=("S",)``, sentence units) ``--runs`` times on a needle haystack of ``--tokens``
(``benchmarks/utils.py``'s ``fresh_needle_case``) and reports the seconds of each run, its peak RSS (the process's,
model included) and ``heta_fast.cpu_allocator.huge_pages_status()``, so a row says whether huge pages were in effect
rather than assuming it. The first S of a process pays for growing its memory, where huge pages matter most, so
the runs are reported apart. Rows go to ``results/huge_pages.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from utils import append_csv, machine

CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import torch
from utils import fresh_needle_case
from heta_fast import Attributor, cpu_allocator
if {threads}:
    torch.set_num_threads({threads})
attr = Attributor.from_pretrained({model!r}, progress=False)
prompt, target, n = fresh_needle_case(attr, {tokens})
kw = dict(preset="document", units="sentence", components=("S",))
seconds = []
for _ in range({runs}):
    res = attr.attribute(prompt, target, **kw)[0]
    seconds.append(round(res.timings["hessian"], 2))
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0] // 1024
print(json.dumps(dict(tokens=n, s_seconds=seconds, peak_mib=peak, status=cpu_allocator.huge_pages_status())))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parent)  # the child imports utils from here too
    print(f"{machine()}; {args.model}")
    print("| THP_MEM_ALLOC_ENABLE | tokens | S s per run | peak RSS MiB | huge pages |")
    print("|---|---|---|---|---|")
    script = CHILD.format(here=here, threads=args.threads, model=args.model, tokens=args.tokens, runs=args.runs)
    for rnd in range(args.rounds):
        for value in ("0", "1"):
            env = {**os.environ, "THP_MEM_ALLOC_ENABLE": value}
            out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {value} | {row['tokens']} | {', '.join(map(str, row['s_seconds']))} | {row['peak_mib']} | "
                  f"{row['status']} |", flush=True)
            append_csv("huge_pages", [dict(model=args.model, round=rnd, thp=value, tokens=row["tokens"],
                                           run=i, s_seconds=s, peak_mib=row["peak_mib"], status=row["status"])
                                      for i, s in enumerate(row["s_seconds"])])


if __name__ == "__main__":
    main()
