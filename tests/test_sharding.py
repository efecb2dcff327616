"""One attribution split over two CPU processes (gloo): the same numbers as one process, on units with levels
(low-rank S, exact unit KL), on exact S at the token level, and the deal of pieces to ranks."""

import json
import multiprocessing as mp
import os

import torch

from heta_fast.sharding import Shard

TEXT = "Ann met Bob. Bob ran.\n\nIt rained. We ate. Cy sang.\n\nDo go. Ok now"
CASES = {
    "levels_lowrank": dict(units="sentence", coarse="paragraph", expand=2, refine=1, hessian="lowrank", rank=6,
                           lowrank_passes=2, num_probes=2, seed=3),
    "tokens_exact": dict(hessian="exact", num_probes=3, seed=1, max_memory=1 << 21),  # small batches: many chunks
    "units_exact": dict(units="sentence", hessian="exact", num_probes=2, seed=2),
}


def _numbers(res) -> dict:
    out = {"M": res.M, "S": res.S, "I": res.I, "scores": res.scores}
    if res.units:
        out["units"] = [(u.score, u.S, u.I, u.scored, u.rank) for u in res.units]
    return out


def _rank_main(rank: int, world: int, init: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    from heta_fast import Attributor
    from heta_fast.batch.distributed import setup
    from heta_fast.testing import CharTokenizer, tiny_model

    ctx = setup(rank=rank, world_size=world, init_method=init, device="cpu")
    try:
        attr = Attributor(tiny_model("llama"), CharTokenizer(), shard=Shard(rank, world))
        got = {name: _numbers(attr.attribute(TEXT, **kw)) for name, kw in CASES.items()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(got, f)
    finally:
        ctx.close()


def test_two_processes_give_the_one_process_result(tmp_path):
    from heta_fast import Attributor
    from heta_fast.testing import CharTokenizer, tiny_model

    torch.set_num_threads(1)
    attr = Attributor(tiny_model("llama"), CharTokenizer())
    alone = {name: _numbers(attr.attribute(TEXT, **kw)) for name, kw in CASES.items()}
    spawn = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [spawn.Process(target=_rank_main, args=(r, 2, init, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        for name in CASES:
            for key, want in alone[name].items():
                have = got[name][key]
                if key == "units":
                    assert [u[3:] for u in have] == [list(u[3:]) for u in want], (name, "scored/rank")
                    have = [x for u in have for x in u[:3]]
                    want = [x for u in want for x in u[:3]]
                a = torch.tensor([float("nan") if v is None else v for v in have], dtype=torch.float64)
                b = torch.tensor([float("nan") if v is None else v for v in want], dtype=torch.float64)
                # Each piece is computed as one process computes it and the others add zeros: equal up to the
                # order of float32 additions in the gate's and the low-rank algebra's reductions.
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-9, equal_nan=True), (name, key, r)


def test_pieces_are_dealt_longest_first_to_the_least_loaded_rank():
    costs = [10, 1, 7, 3, 3, 6]
    deals = [Shard(r, 2).mine(costs) for r in range(2)]
    assert all(a != b for a, b in zip(*deals, strict=True))  # every piece to exactly one rank
    loads = [sum(c for c, m in zip(costs, d, strict=True) if m) for d in deals]
    # By hand: 10→0, 7→1, 6→1 (13), 3→0 (13), 3→0 (tie: the lower rank, 16), 1→1 (14).
    assert loads == [16, 14]
    assert Shard(0, 1).mine(costs) == [True] * len(costs)


def test_python_m_heta_fast_is_the_command_line_torchrun_starts():
    """``torchrun -m heta_fast attribute ... --split-work`` needs ``python -m heta_fast``; the flag is on it."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "heta_fast", "attribute", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--split-work" in out.stdout and "--plan" in out.stdout
