"""The KL term I on the default model: one batched pass vs the published per-token loop (issue 3).

    python benchmarks/bench_kl_pass.py [--contexts 32 128 512] [--loop-sample 16]
    python benchmarks/bench_kl_pass.py --device cuda --model llama-3.2-1b   # GPU, random weights

Providers, measured side by side in one run on the same text:
  * ``loop``: the published algorithm: for each context token, mask it, run a full forward with
    logits at every position (as the official code does), KL at p.
  * ``loop-lastlogit``: the same loop computing only the logits at p (heta_fast's reference engine).
  * ``one-pass``: heta_fast's prefix-reusing batched pass + fused streaming KL op.
Every loop iteration costs the same (a full forward over t tokens), so for long contexts the loops are
timed on ``--loop-sample`` evenly spaced masks and scaled by t/sample; the table says when.
``floor`` is the arithmetic floor of the exact pass: one clean forward of the transformer body costs
F(t), and the masked suffixes hold about t(t+1)/2 token rows = (t+1)/2 such forwards, plus the LM head
and KL for t rows.
"""

from __future__ import annotations

import argparse
import time

import torch
from utils import MODEL_CHOICES, append_csv, bench_model, machine, measure

from heta_fast.hf import ModelAdapter
from heta_fast.information.batched import information_batched, mask_chunk_size
from heta_fast.information.reference import kl_divergence

TEXT = (
    "The history of the river valley is long. Farmers settled along its banks thousands of years ago, "
    "built canals to water their fields, and traded grain with the towns upstream. Over the centuries the "
    "river changed its course many times, and each flood left a layer of rich silt behind. "
)


def context_ids(tok, t: int) -> torch.Tensor:
    ids = tok(TEXT * (1 + t // 40))["input_ids"]
    if len(ids) < t:
        raise SystemExit(f"text too short for t={t}")
    return torch.tensor(ids[:t])


def loop_kl(adapter, ids, mask_vec, positions, all_logits: bool):
    X = adapter.embed(ids)
    with torch.no_grad():
        base = torch.log_softmax(adapter.last_logits(X).double(), -1)
        out = []
        for i in positions:
            Xi = X.clone()
            Xi[i] = mask_vec
            logits = adapter.forward(Xi, keep_last=not all_logits).logits[0, -1]
            out.append(kl_divergence(base, torch.log_softmax(logits.double(), -1)))
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--loop-sample", type=int, default=16, help="masks timed per loop when t is larger")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--model", default="default", choices=MODEL_CHOICES,
                    help="the default model, or a random-weight model of a real shape (no checkpoint needed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ids_of_length, label = bench_model(args.model, args.device)
    adapter = ModelAdapter(model)
    dev = args.device
    print(f"# KL pass, {label}, float32, {dev} — {machine()}")
    header = f"{'t':>5} {'provider':<15} {'seconds':>9} {'vs loop':>8} {'peak MiB':>9} {'/floor':>7}  note"
    print(header)
    rows = []
    for t in args.contexts:
        ids = ids_of_length(t).to(dev)
        mask_vec = torch.zeros(adapter.hidden_size, device=dev)
        # Floor: body forward at length t (no LM head), scaled to t(t+1)/2 rows, plus head+KL on t rows.
        base = model.base_model
        with torch.no_grad():
            X = adapter.embed(ids)[None]
            base(inputs_embeds=X)
            f_body, _, _ = measure(lambda: base(inputs_embeds=X), repeats=3)
        w = model.get_output_embeddings().weight
        head, _, _ = measure(lambda: torch.log_softmax(torch.randn(t, adapter.hidden_size, device=dev) @ w.T, -1), repeats=3)
        floor = f_body * (t + 1) / 2 + head
        sample = list(range(t)) if t <= args.loop_sample else torch.linspace(0, t - 1, args.loop_sample).long().tolist()
        scale = t / len(sample)
        results = {}
        for name, all_logits in (("loop", True), ("loop-lastlogit", False)):
            secs, peak, out = measure(lambda: loop_kl(adapter, ids, mask_vec, sample, all_logits))
            results[name] = (secs * scale, peak, out, "" if scale == 1 else f"timed on {len(sample)} masks, x{scale:.0f}")
        secs, peak, out = measure(lambda: information_batched(adapter, ids, mask_vec))
        results["one-pass"] = (secs, peak, out, f"chunk={mask_chunk_size(adapter, t, 2 * 1024**3)}")
        # Same numbers: the one-pass I agrees with the loop on the sampled masks.
        err = float((results["one-pass"][2][sample].double() - results["loop"][2]).abs().max()
                    / results["loop"][2].abs().max())
        loop_s = results["loop"][0]
        for name, (secs, peak, _, note) in results.items():
            ratio = loop_s / secs
            print(f"{t:>5} {name:<15} {secs:>9.2f} {ratio:>7.2f}x {peak:>9.0f} {secs / floor:>7.2f}  {note}")
            rows.append({"model": args.model, "device": dev, "t": t, "provider": name, "seconds": f"{secs:.3f}", "speedup_vs_loop": f"{ratio:.2f}",
                         "peak_extra_mib": f"{peak:.0f}", "over_floor": f"{secs / floor:.2f}", "note": note})
        print(f"{t:>5} {'floor':<15} {floor:>9.2f}   (max rel. difference one-pass vs loop: {err:.1e})")
        rows.append({"model": args.model, "device": dev, "t": t, "provider": "floor", "seconds": f"{floor:.3f}", "speedup_vs_loop": "",
                     "peak_extra_mib": "", "over_floor": "1.00", "note": f"rel_err={err:.1e}"})
    if not args.no_csv:
        print(f"rows appended to {append_csv('kl_pass', rows)}")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f}s")
