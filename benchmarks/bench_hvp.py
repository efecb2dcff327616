"""The Hessian term S on the default model: batched paths vs the published one-by-one loop (issue 4).

    python benchmarks/bench_hvp.py [--contexts 32 64 128] [--probes 10] [--loop-sample 8]
    python benchmarks/bench_hvp.py --device cuda --model llama-3.2-1b --contexts 512   # GPU, random weights

Providers, side by side in one run on the same text and the same seeded probes:
  * ``loop``: the published algorithm (github.com/VishalPramanik/HETA, ``HessianSensitivity.compute``): one
    forward with logits at every position and one gradient with ``create_graph``, then one double backward
    per (token, probe) with a host sync each. Every double backward costs the same, so they are timed on
    ``--loop-sample`` (token, probe) pairs spread over the context and scaled to t·m (the table says so);
    half of them before the batched providers run and half after, so that a slow or fast spell of a shared
    machine (seen: the same loop 38 % slower in one session than in another) weighs on both sides alike.
    (Sessions before 2026-11-28 re-ran the forward and first backward for every probe, which made the loop
    1.6–2x slower than the published code and every ratio that much too high.)
  * ``exact``: heta_fast's batched exact path (causal suffixes, one graph per chunk, batched second
    backwards); agrees with the loop to float32 precision.
  * ``exact-autograd-head``: the same path with the LM head left to autograd (its closed form,
    ``heta_fast/head_curvature.py``, switched off): what that closed form buys, side by side.
  * ``lowrank-16``, ``lowrank-64``: randomized range finder; ``gauss-newton``: JVP + VJP per probe.

``--layers K`` differentiates every provider, the loop included, with respect to the residual entering the last
K layers (the library default is the last 6); without it, with respect to the embedding rows, as the published
code does.
Spearman ρ of each approximation against the exact S is reported beside its speed.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch
from utils import MODEL_CHOICES, append_csv, bench_model, machine, measure

from heta_fast.cpu_allocator import malloc_tuning_status, tune_malloc_for_tensors
from heta_fast.curvature import batched as curvature_batched
from heta_fast.curvature.batched import sensitivity_batched
from heta_fast.evaluation.metrics import spearman
from heta_fast.hf import ModelAdapter
from heta_fast.probes import draw_probes


def published_loop(adapter, ids, target, probes, pairs, layers=None):
    """The published algorithm (official HETA code): one forward with logits at every position, one gradient
    with ``create_graph``, then one double backward per (token, probe), each ending in a host sync (``.item()``).

    Returns (seconds of the forward + first backward, seconds per HVP over ``pairs``, the sampled S terms).
    """
    t0 = time.perf_counter()
    X = adapter.embed(ids).detach()
    if layers is None:
        x = X.clone().requires_grad_(True)
        logits = adapter.forward(x, keep_last=False).logits[0]
    else:  # the residual entering layer L−k, as heta_fast's layers=k
        layer = adapter.first_layer(layers)
        with torch.no_grad(), adapter.record(layer_inputs=True) as rec:
            adapter.forward(X)
        x = rec.layer_inputs[layer].detach().clone().requires_grad_(True)
        logits = adapter.forward(X, keep_last=False, replace_layer_input=(layer, x)).logits[0]
    g = torch.log_softmax(logits[-1], -1)[target]
    (grad,) = torch.autograd.grad(g, x, create_graph=True)
    graph_s = time.perf_counter() - t0
    out = []
    t0 = time.perf_counter()
    for i, k in pairs:
        v = torch.zeros_like(x)
        v[i] = probes[i, k]
        (hv,) = torch.autograd.grad((grad * v).sum(), x, retain_graph=True)
        out.append(hv[i].abs().sum().item())
    return graph_s, (time.perf_counter() - t0) / len(pairs), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--loop-sample", type=int, default=16)
    ap.add_argument("--skip-exact-above", type=int, default=10**9, help="skip the exact path above this t")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--model", default="default", choices=MODEL_CHOICES,
                    help="the default model, or a random-weight model of a real shape (no checkpoint needed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-memory-gib", type=float, default=None,
                    help="memory budget of the batched paths (default: the library's)")
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--layers", type=int, default=None,
                    help="curvature over the last K layers for every provider (default: the embedding rows)")
    ap.add_argument("--providers", nargs="+",
                    default=["exact", "exact-autograd-head", "lowrank-16", "lowrank-64", "gauss-newton"],
                    help="which batched providers to run beside the loop (ρ needs exact)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc_for_tensors()  # as an Attributor does; the loop and the batched paths share the process
    model, context_ids, label = bench_model(args.model, args.device)
    adapter = ModelAdapter(model)
    budget = {} if args.max_memory_gib is None else {"max_memory": int(args.max_memory_gib * 2**30)}
    budget["layers"] = args.layers
    m = args.probes
    where = "the embedding rows" if args.layers is None else f"the last {args.layers} layers"
    print(f"# S on the {label}, float32, m={m}, curvature over {where}, {args.device} — {machine()}; "
          f"malloc tuning: {malloc_tuning_status()}")
    print(f"{'t':>4} {'provider':<13} {'seconds':>9} {'vs loop':>8} {'peak MiB':>9} {'spearman':>9}  note")
    rows = []
    for t in args.contexts:
        ids = context_ids(t + 1).to(args.device)
        ctx, target = ids[:t], int(ids[t])
        probes = draw_probes(t, m, adapter.hidden_size, seed=0).float()
        step = max(1, (t * m) // args.loop_sample)
        pairs = [(j // m, j % m) for j in range(0, t * m, step)][: args.loop_sample]
        _, loop_peak, (graph_s, before, _) = measure(lambda: published_loop(adapter, ctx, target, probes, pairs[0::2],
                                                                        args.layers))
        res = {}
        exact = None
        if t <= args.skip_exact_above and "exact" in args.providers:
            secs, peak, exact = measure(lambda: sensitivity_batched(adapter, ctx, target, probes=probes, **budget))
            res["exact"] = (secs, peak, 1.0, "")  # equality with the loop is a test (tests/curvature/test_fast_vs_reference.py)
        if "exact-autograd-head" in args.providers:
            with mock.patch.object(curvature_batched, "clean_head_curvature", lambda *a: None):
                secs, peak, S = measure(lambda: sensitivity_batched(adapter, ctx, target, probes=probes, **budget))
            res["exact-autograd-head"] = (secs, peak, spearman(S.cpu(), exact.cpu()) if exact is not None
                                          else float("nan"), "LM head through autograd")
        for name, kw in (("lowrank-16", dict(hessian="lowrank", rank=16)),
                         ("lowrank-64", dict(hessian="lowrank", rank=64)),
                         ("gauss-newton", dict(curvature="gauss_newton"))):
            if name not in args.providers:
                continue
            secs, peak, S = measure(lambda kw=kw: sensitivity_batched(adapter, ctx, target, probes=probes, **kw, **budget))
            res[name] = (secs, peak, spearman(S.cpu(), exact.cpu()) if exact is not None else float("nan"), "")
        _, peak_after, (graph_after, after, _) = measure(
            lambda: published_loop(adapter, ctx, target, probes, pairs[1::2], args.layers))
        per_hvp, graph_s = (before + after) / 2, (graph_s + graph_after) / 2
        loop_s = graph_s + per_hvp * t * m
        res = {"loop": (loop_s, max(loop_peak, peak_after), None,
                        f"graph {graph_s:.2f} s + {t * m} HVPs x {per_hvp:.3f} s (timed on {len(pairs)}, scaled; "
                        f"{before:.3f} s before the others, {after:.3f} s after)"), **res}
        for name, (secs, peak, rho, note) in res.items():
            rho_s = "" if rho is None else f"{rho:.3f}"
            print(f"{t:>4} {name:<13} {secs:>9.2f} {loop_s / secs:>7.1f}x {peak:>9.0f} {rho_s:>9}  {note}")
            rows.append({"model": args.model, "device": args.device, "t": t, "m": m, "layers": args.layers or "",
                         "provider": name, "seconds": f"{secs:.3f}",
                         "speedup_vs_loop": f"{loop_s / secs:.2f}", "peak_extra_mib": f"{peak:.0f}",
                         "spearman_vs_exact": rho_s, "note": note,
                         "malloc_tuning": malloc_tuning_status()})
    if not args.no_csv:
        print(f"rows appended to {append_csv('hvp', rows)}")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f}s")
