"""The KL pass's suffix attention: one SDPA call with an explicit causal mask vs prefix + causal suffix.

    python benchmarks/bench_suffix_attention.py [--tokens 2048 8192] [--threads 2]

A masked suffix (queries a … t−1) runs against keys 0 … t−1. Side by side in one run on the same inputs:
  * ``attention``: one attention layer of the default model's shape (9 heads of 64), suffixes of t/2 and
    t/8 queries: SDPA with the bottom-right causal mask vs :func:`split_causal_attention`;
  * ``kl-pass``: the unit KL pass on the default model over the Python Language Reference (as
    bench_units.py), four 32-token units at depths 0.1, 0.4, 0.7, 0.9, one masked suffix each, with either
    attention; wall per token-row computed (the masked suffixes and the pass's one clean forward) against
    one clean forward's (the pass's arithmetic floor).
Rows go to ``results/suffix_attention.csv`` and ``results/suffix_kl_pass.csv``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_units import reference_text
from utils import append_csv, load_avg, machine, measure

from heta_fast import Attributor
from heta_fast.hf import attention as heta_attention_module
from heta_fast.hf.suffix_attention import split_causal_attention
from heta_fast.information import mask_vector
from heta_fast.information.batched import information_batched


def clean_forward_wall(attributor, ids) -> float:
    """Wall seconds of one clean forward of the transformer body over ids (best of two): the floor's unit."""
    adapter = attributor.adapter
    with torch.no_grad():
        X = adapter.embed(ids) * adapter.embed_scale
        return measure(lambda: adapter.model.base_model(inputs_embeds=X[None]), repeats=2)[0]


def attention_rows(t: int) -> list[dict]:
    rows = []
    for q_len in (t // 2, t // 8):
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, 9, q_len, 64, generator=g)
        k, v = (torch.randn(1, 9, t, 64, generator=g) for _ in range(2))
        mask = torch.arange(t)[None, :] <= torch.arange(t - q_len, t)[:, None]
        # Best of four calls (the first warms up).
        masked = measure(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125), repeats=4)[0]
        split = measure(lambda: split_causal_attention(q, k, v, 0.125), repeats=4)[0]
        diff = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125)
                - split_causal_attention(q, k, v, 0.125)).abs().max()
        print(f"attention t={t} queries={q_len}: mask {masked * 1e3:7.1f} ms  split {split * 1e3:7.1f} ms  "
              f"{masked / split:4.2f}x  max|Δ| {float(diff):.1e}")
        rows.append({"config": "attention", "tokens": t, "queries": q_len, "mask_s": f"{masked:.4f}",
                     "split_s": f"{split:.4f}", "ratio": f"{masked / split:.2f}"})
    return rows


def kl_pass_rows(attributor, t: int) -> list[dict]:
    adapter = attributor.adapter
    ids = torch.tensor(attributor.tokenizer(reference_text(attributor.tokenizer, t))["input_ids"][:t])
    vec = mask_vector(adapter, ids, "zero", None)
    units = [(int(d * t), int(d * t) + 32) for d in (0.1, 0.4, 0.7, 0.9)]
    rows_computed = sum(t - a for a, _ in units) + t  # the masked suffixes and the pass's one clean forward
    per_row_floor = clean_forward_wall(attributor, ids) / t
    real = heta_attention_module.split_causal_attention
    out, rows = {}, []
    for name in ("mask", "split"):
        if name == "mask":
            heta_attention_module.split_causal_attention = lambda *a: None
        try:
            secs, peak, out[name] = measure(lambda: information_batched(adapter, ids, vec, units=units, chunk_size=1))
        finally:
            heta_attention_module.split_causal_attention = real
        per_row = secs / rows_computed
        print(f"kl-pass t={t} {name:<5} {secs:7.1f} s  {per_row * 1e3:5.2f} ms/row = {per_row / per_row_floor:4.2f}x "
              f"a clean forward's row  peak +{peak:5.0f} MiB  (load {load_avg():.1f})")
        rows.append({"config": f"kl-pass-{name}", "tokens": t, "rows": rows_computed, "wall_s": f"{secs:.1f}",
                     "ms_per_row": f"{per_row * 1e3:.2f}", "floor_ms_per_row": f"{per_row_floor * 1e3:.2f}",
                     "peak_extra_mib": f"{peak:.0f}"})
    print(f"kl-pass t={t}: mask/split {float(rows[0]['wall_s']) / float(rows[1]['wall_s']):.2f}x, "
          f"max |ΔI| {float((out['mask'] - out['split']).abs().max()):.1e}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-kl", action="store_true", help="attention only (no model)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    attributor = None if args.skip_kl else Attributor.from_pretrained("default")
    for t in args.tokens:
        tables = {"suffix_attention": attention_rows(t)}
        if attributor is not None:
            tables["suffix_kl_pass"] = kl_pass_rows(attributor, t)
        for name, rows in tables.items():
            for r in rows:
                r.update(machine=machine(), load=f"{load_avg():.1f}")
            append_csv(name, rows)


if __name__ == "__main__":
    main()
