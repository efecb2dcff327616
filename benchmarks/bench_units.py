"""Sentence units over a whole long context against the windowed token level, side by side (issue 16).

    python benchmarks/bench_units.py [--tokens 2048] [--threads 1] [--baseline] [--passes 1 2]
    python benchmarks/bench_units.py --tokens 8192 --baseline-only   # the `long` preset alone, same input
    python benchmarks/bench_units.py --kl-memory 256      # the KL pass's prefix cache: copied vs shared view

The text is the Python Language Reference as shipped with CPython (``pydoc_data.topics``, PSF License 2.0):
real technical prose with hard-wrapped lines, lists, headings and code, joined until the context holds
``--tokens`` tokens; the target is the token after them. Every configuration runs in this process, one after
the other, on the same input: wall time per stage, peak resident memory above the loaded model, and the
arithmetic floor of the unit KL term, Σ_u (t − start_u) token-rows (what one masked suffix per unit must
compute), with the seconds it would take at the speed of one clean forward. Rows go to
``results/units.csv``; the unit result to ``results/units_<tokens>.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from utils import RESULTS_DIR, append_csv, load_avg, machine, measure

from heta_fast import Attributor


def reference_text(tokenizer, n_tokens: int) -> str:
    """Sections of the Python Language Reference joined until they hold n_tokens + 1 tokens; cut there."""
    import pydoc_data.topics as topics

    text = ""
    for key in ("execmodel", "exceptions", "naming", "import", "compound", "assignment", "types", "datamodel"):
        if key in topics.topics:
            text += topics.topics[key] + "\n\n"
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > n_tokens:
            break
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= n_tokens:
        raise SystemExit(f"the reference text has only {len(enc['input_ids'])} tokens")
    return text[: enc["offset_mapping"][n_tokens][1]]


def clean_forward_seconds(attributor, ids) -> float:
    """CPU seconds of one clean forward over the context (body only), the unit of the KL floor."""
    adapter = attributor.adapter
    with torch.no_grad():
        X = adapter.embed(ids)
        t0 = time.process_time()
        adapter.model.base_model(inputs_embeds=(X * adapter.embed_scale)[None])
        return time.process_time() - t0


def kl_memory(t: int) -> None:
    """Peak memory of the KL pass with the clean prefix cache copied per mask (before) and shared as a view."""
    from heta_fast.hf import cut_cache
    from heta_fast.information import batched, mask_vector

    def copied(cache, length, n):  # what the pass did before: a deep copy, cut, repeated per mask
        past = cut_cache(cache, length)
        past.batch_repeat_interleave(n)
        return past

    attributor = Attributor.from_pretrained("default")
    adapter = attributor.adapter
    ids = torch.tensor(attributor.tokenizer(reference_text(attributor.tokenizer, t))["input_ids"][:t])
    vec = mask_vector(adapter, ids, "zero", None)
    chunk = -(-t // 16)  # the same chunks for both (t/16 masks, the default without a memory limit)
    shared = batched.shared_prefix_cache
    out = {}
    for name, prefix in (("copied", copied), ("shared-view", shared)):
        batched.shared_prefix_cache = prefix
        try:
            secs, peak, I = measure(lambda: batched.information_batched(adapter, ids, vec, chunk_size=chunk))
        finally:
            batched.shared_prefix_cache = shared
        out[name] = I
        print(f"KL pass t={t} chunk={chunk} {name:<12} {secs:8.1f} s  peak +{peak:7.0f} MiB  (load {load_avg():.1f})")
        append_csv("units", [{"config": f"kl-pass-{name}", "tokens": t, "wall_s": f"{secs:.1f}",
                              "peak_extra_mib": f"{peak:.0f}", "load": f"{load_avg():.1f}", "machine": machine()}])
    print(f"max |ΔI| between them: {float((out['copied'] - out['shared-view']).abs().max()):.2e}")


class CpuClock:
    """Stands in for the ``time`` module inside heta_fast.engine: stage timings in process CPU seconds.

    On a shared machine wall time measures the other jobs as much as this one; with one torch thread the
    process's CPU time is what the stage costs on one core.
    """

    perf_counter = staticmethod(time.process_time)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--passes", type=int, nargs="+", default=[1], help="lowrank_passes of the unit runs")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--max-memory-gib", type=float, default=8.0, help="as the document preset")
    ap.add_argument("--baseline", action="store_true", help="also run the `long` preset (token level, windows)")
    ap.add_argument("--baseline-only", action="store_true",
                    help="run only the `long` preset (when the unit run's row is already in results/units.csv)")
    ap.add_argument("--kl-memory", type=int, default=None, metavar="T", help="only the KL-pass memory comparison")
    ap.add_argument("--progress", action="store_true", help="progress bars on stderr (long runs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import heta_fast.engine

    heta_fast.engine.time = CpuClock  # stage timings in CPU seconds (see CpuClock)
    if args.kl_memory:
        return kl_memory(args.kl_memory)
    attributor = Attributor.from_pretrained("default", progress=args.progress)
    text = reference_text(attributor.tokenizer, args.tokens)
    ids = torch.tensor(attributor.tokenizer(text)["input_ids"])
    print(f"# {args.tokens}-token context (Python Language Reference), default model — {machine()}")
    fwd = clean_forward_seconds(attributor, ids[: args.tokens])
    print(f"clean forward over {args.tokens} rows: {fwd:.2f} CPU s (prices the KL floor; compares machines across runs)")
    rows = []
    base = dict(hessian="lowrank", rank=args.rank, layers=6, max_memory=int(args.max_memory_gib * 2**30))
    for passes in [] if args.baseline_only else args.passes:
        opts = dict(base, units="sentence", lowrank_passes=passes)
        load0 = load_avg()
        cpu0 = time.process_time()
        secs, peak, res = measure(lambda o=opts: attributor.attribute(text, **o))
        cpu = time.process_time() - cpu0
        t = res.target_position
        k = 1 if res.options.get("sink_token") is not None else 0  # the sink runs as a unit of its own
        floor_rows = sum(t - u.token_range[0] for u in res.units) + k * (t + k)
        floor_s = fwd * floor_rows / t
        print(f"units=sentence lowrank_passes={passes}: {len(res.units)} units, wall {secs:.1f} s, CPU {cpu:.1f} s, "
              f"peak +{peak:.0f} MiB, stage CPU s "
              f"{json.dumps({n: round(v, 1) for n, v in res.timings.items()})}; KL floor {floor_rows} "
              f"token-rows ≈ {floor_s:.1f} s at one clean forward ({fwd:.2f} s / {t} rows); load {load0:.1f}→{load_avg():.1f}")
        print("top units:", [(u.rank, round(u.score, 4), " ".join(u.text.split())[:60]) for u in res.top_units(5)])
        rows.append({"config": f"units-sentence-passes{passes}", "tokens": t, "units": len(res.units),
                     "wall_s": f"{secs:.1f}", "cpu_s": f"{cpu:.1f}",
                     **{f"{n}_cpu_s": f"{v:.1f}" for n, v in res.timings.items()},
                     "peak_extra_mib": f"{peak:.0f}", "kl_floor_rows": floor_rows, "kl_floor_s": f"{floor_s:.1f}",
                     "load": f"{load0:.1f}-{load_avg():.1f}", "machine": machine()})
        res.to_json(str(RESULTS_DIR / f"units_{args.tokens}_passes{passes}.json"))
    if args.baseline or args.baseline_only:
        load0 = load_avg()
        cpu0 = time.process_time()
        secs, peak, res = measure(lambda: attributor.attribute(text, preset="long"))
        cpu = time.process_time() - cpu0
        print(f"preset long (token level, windows of 256): wall {secs:.1f} s, CPU {cpu:.1f} s, peak +{peak:.0f} MiB, "
              "stage CPU s "
              f"{json.dumps({n: round(v, 1) for n, v in res.timings.items()})}; load {load0:.1f}→{load_avg():.1f}")
        rows.append({"config": "preset-long", "tokens": res.target_position, "units": res.target_position,
                     "wall_s": f"{secs:.1f}", "cpu_s": f"{cpu:.1f}",
                     **{f"{n}_cpu_s": f"{v:.1f}" for n, v in res.timings.items()},
                     "peak_extra_mib": f"{peak:.0f}", "load": f"{load0:.1f}-{load_avg():.1f}", "machine": machine()})
        res.to_json(str(RESULTS_DIR / f"long_preset_{args.tokens}.json"))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    append_csv("units", [{k: r.get(k, "") for k in keys} for r in rows])


if __name__ == "__main__":
    main()
