"""Several targets of one text: today's per-target loop vs what sharing forward work across targets saves.

    python benchmarks/bench_multi_target.py [--model small|tiny|default] [--prompt-len 24] [--targets 8]
                                            [--num-probes 2] [--repeats 1] [--csv FILE]

A continuation (``target="..."`` or ``generate=N``) is explained token by token: today each target t runs its
own gate forward, its own curvature graph and its own t masked KL forwards, although targets t < t' see the
same prefix. This script times, per stage, the loop the API runs (``Attributor.attribute(ids, target=t)`` for
each t) against *prototypes* that share work across all T targets, written here from the engine's public
pieces (nothing in the engine is changed), and checks that they give the same numbers:

- gate: ONE recorded forward over the longest context (q/k/v of every position; causal, so a prefix's q/k/v
  are the same as in its own run), value norms once, then one flow rollout per prediction position p;
- KL: ONE batch of masked runs over the longest context (mask i, rows i … n-2 recomputed from the clean
  prefix cache); the hidden state of that run at every p ≥ i serves every target t = p + 1 > i, so the masked
  forwards are done once instead of once per target (KL head per target from :func:`heta_fast.ops.kl_from_hidden`);
- hessian (exact): ONE forward with graph over the longest context, then per target a first backward and the
  batched probe backwards. The backwards still run over the whole sequence, so this mainly saves forwards.

The model is a random-weight llama (``small``: d=256, 4 layers, 8 heads; ``tiny``: the test model) or the
default SmolLM2-135M (``default``, offline). Prints a markdown table; ``--csv`` appends its rows to a file.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import inspect
import platform
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
try:
    import heta_fast
except ImportError:  # plain checkout, not pip-installed
    sys.path.insert(0, str(REPO_ROOT))
    import heta_fast

from heta_fast import reference  # noqa: E402
from heta_fast.hf import cache_kwargs  # noqa: E402
from heta_fast.ops import kl_from_hidden  # noqa: E402
from heta_fast.rollout import LayerAttention, flow_rollout  # noqa: E402


def load(model: str):
    if model == "default":
        return heta_fast.Attributor.from_pretrained("default")
    if model == "tiny":
        from heta_fast.testing import tiny_model

        return heta_fast.Attributor(tiny_model("llama"))
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    return heta_fast.Attributor(tf.AutoModelForCausalLM.from_config(cfg).eval(), name="small-llama")


# ----------------------------------------------------------------------------------- shared prototypes
def shared_gate(adapter, ids: torch.Tensor, targets: list[int]) -> dict[int, torch.Tensor]:
    """M for every target from one recorded forward over ids[: max t]."""
    n = max(targets)
    X = adapter.embed(ids[:n])
    with torch.no_grad(), adapter.record(keep_qk=True) as rec:
        adapter.forward(X)
        layers = [
            LayerAttention(q=r.query, k=r.key, scaling=r.scaling, sliding_window=r.sliding_window, softcap=r.softcap)
            for r in (rec.layers[j] for j in range(adapter.num_layers))
        ]
        nus = [reference.value_norms(adapter, j, rec.layers[j].value).float() for j in range(adapter.num_layers)]
        out = {}
        for t in targets:
            Phi = flow_rollout(layers, t - 1)  # [L, H, n]; columns > p are zero
            contrib = sum((Phi[j] * nus[j]).sum(0) for j in range(adapter.num_layers))[:t]
            out[t] = reference._normalise_gate(contrib)
    return out


def _cut(cache, length: int):
    """A copy of the cache holding the first ``length`` positions (``crop`` changed meaning in transformers 5)."""
    past = copy.deepcopy(cache)
    remove = past.get_seq_length() - length
    if remove:
        past.crop(-remove if "tokens_to_remove" in inspect.signature(past.crop).parameters else length)
    return past


def shared_kl(
    adapter, ids: torch.Tensor, targets: list[int], mask_vec: torch.Tensor, chunk: int = 16
) -> dict[int, torch.Tensor]:
    """I for every target from one batch of masked runs over ids[: max t] (suffixes on the clean cache)."""
    from transformers import DynamicCache

    base = adapter.model.base_model
    weight, bias, softcap = adapter.lm_head()
    n = max(targets)
    X = adapter.embed(ids[:n])
    d = X.shape[1]
    scale = adapter.embed_scale
    out = {t: torch.empty(t) for t in targets}
    with torch.no_grad():
        cache = DynamicCache()
        clean = base(inputs_embeds=(X * scale)[None], **cache_kwargs(base, cache)).last_hidden_state[0]
        z = torch.nn.functional.linear(clean, weight, bias)
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        base_logp = torch.log_softmax(z.float(), -1)  # [n, V]: the clean distribution at every p
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            rows = torch.arange(b - a)
            suffix = X[a:].expand(b - a, n - a, d).clone()
            suffix[rows, rows] = mask_vec.to(X.dtype)
            past = None
            if a > 0:
                past = _cut(cache, a)
                past.batch_repeat_interleave(b - a)
            hidden = base(inputs_embeds=suffix * scale, **cache_kwargs(base, past)).last_hidden_state
            for t in targets:  # masks i in [a, min(b, t)) matter for target t; its prediction position is t-1
                hi = min(b, t)
                if hi > a:
                    out[t][a:hi] = kl_from_hidden(
                        hidden[: hi - a, t - 1 - a], weight, base_logp[t - 1], bias=bias, softcap=softcap
                    ).cpu()
    return out


def shared_hessian(adapter, ids: torch.Tensor, targets: list[int], m: int, seed: int) -> dict[int, torch.Tensor]:
    """Exact S for every target: one forward graph over ids[: max t], per-target first and probe backwards."""
    n = max(targets)
    X = adapter.embed(ids[:n]).detach().clone().requires_grad_(True)
    logp = torch.log_softmax(adapter.forward(X, keep_last=False).logits[0], -1)  # [n, V], one graph
    batch = 32  # the engine's CPU cap on directions per batched backward
    out = {}
    for t in targets:
        (grad,) = torch.autograd.grad(logp[t - 1, int(ids[t])], X, create_graph=True, retain_graph=True)
        probes = reference.draw_probes(t, m, X.shape[1], seed).to(X)
        pairs = [(i, k) for i in range(t) for k in range(m)]
        S = torch.zeros(t, dtype=X.dtype)
        for a in range(0, len(pairs), batch):
            chunk = pairs[a : a + batch]
            r = torch.tensor([i for i, _ in chunk])
            k = torch.tensor([k for _, k in chunk])
            ar = torch.arange(len(chunk))
            V = torch.zeros(len(chunk), n, X.shape[1], dtype=X.dtype)
            V[ar, r] = probes[r, k]
            (HV,) = torch.autograd.grad(grad, X, V, retain_graph=True, is_grads_batched=True)
            S.index_add_(0, r, HV[ar, r].abs().sum(-1).detach())
        out[t] = S / m
    return out


# ------------------------------------------------------------------------------------------------ main
def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small", choices=["small", "tiny", "default"])
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--targets", type=int, default=8, help="T: continuation tokens explained")
    ap.add_argument("--num-probes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="best of R timings")
    ap.add_argument("--csv", help="append the rows to this CSV file")
    args = ap.parse_args()

    attributor = load(args.model)
    adapter = attributor.adapter
    n_all = args.prompt_len + args.targets
    ids = torch.randint(3, adapter.vocab_size, (n_all,), generator=torch.Generator().manual_seed(1))
    targets = list(range(args.prompt_len, n_all))
    mask_vec = torch.zeros(adapter.hidden_size, dtype=adapter.dtype)
    opts = dict(num_probes=args.num_probes, seed=args.seed)

    def best(fn):
        times, val = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            val = fn()
            times.append(time.perf_counter() - t0)
        return min(times), val

    attributor.attribute(ids[:8], num_probes=1)  # warm-up (first autograd/vmap use is slow)
    # The loop the API runs for a continuation; per-stage seconds from the fastest repeat.
    wall_loop, loop, per_target = float("inf"), {}, {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = {t: attributor.attribute(ids, target=t, **opts) for t in targets}
        wall = time.perf_counter() - t0
        if wall < wall_loop:
            wall_loop, per_target = wall, res
            loop = {k: sum(r.timings.get(k, 0.0) for r in res.values()) for k in ("gate", "hessian", "kl")}
    t_gate, M = best(lambda: shared_gate(adapter, ids, targets))
    t_kl, I = best(lambda: shared_kl(adapter, ids, targets, mask_vec))
    t_hes, S = best(lambda: shared_hessian(adapter, ids, targets, args.num_probes, args.seed))
    err = {
        "gate": max(rel(M[t], per_target[t].M) for t in targets),
        "kl": max(rel(I[t], per_target[t].I) for t in targets),
        "hessian": max(rel(S[t], per_target[t].S) for t in targets),
    }
    shared = {"gate": t_gate, "hessian": t_hes, "kl": t_kl}
    cfg = (
        f"model={args.model}, prompt={args.prompt_len}, T={args.targets}, m={args.num_probes}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"\n{cfg}\n")
    print("| stage | per-target loop (s) | shared prototype (s) | speed-up | max rel. diff |")
    print("|---|---|---|---|---|")
    rows = []
    for k in ("gate", "hessian", "kl"):
        sp = loop[k] / shared[k] if shared[k] > 0 else float("nan")
        print(f"| {k} | {loop[k]:.3f} | {shared[k]:.3f} | {sp:.1f}x | {err[k]:.1e} |")
        rows.append([k, f"{loop[k]:.4f}", f"{shared[k]:.4f}", f"{sp:.2f}", f"{err[k]:.2e}"])
    tot_l, tot_s = sum(loop.values()), sum(shared.values())
    print(f"| all three | {tot_l:.3f} (wall {wall_loop:.3f}) | {tot_s:.3f} | {tot_l / tot_s:.1f}x | |")
    if args.csv:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        new = not Path(args.csv).exists()
        with open(args.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["stage", "loop_s", "shared_s", "speedup", "max_rel_diff", "config", "timestamp"])
            for r in rows:
                w.writerow([*r, cfg, stamp])


if __name__ == "__main__":
    main()
