"""The gate M of a long input never holds attention maps: peak memory far below L·H·n² floats.

Runs in a fresh child process so its peak resident memory (VmHWM, reset through clear_refs after the
model is built) is this computation's own. The child's glibc malloc gets a fixed mmap threshold: with its
default, adaptive one, freed blocks stayed in the heap by chance and the same run peaked anywhere between 76
and 138 MiB; with it every large tensor is mapped and unmapped, and the peak is the live memory (37 MiB, the
same every run).
"""

import textwrap

from heta_fast.testing import live_memory_child

CHILD = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from heta_fast.gate import gate_fast
    from heta_fast.hf import ModelAdapter
    from heta_fast.testing import tiny_model
    from heta_fast.gate import gate_reference

    from heta_fast.profiling import reset_peak_rss, status_kib

    def hwm_mib():
        return status_kib("VmHWM") / 1024

    n, materialise = int(sys.argv[1]), sys.argv[2] == "1"
    model = tiny_model("llama", max_position_embeddings=n)
    adapter = ModelAdapter(model)
    ids = torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    gate_fast(adapter, ids[:64], "flow", None)  # warm up allocator and kernels
    reset_peak_rss()
    base = hwm_mib()
    with torch.no_grad():
        M = gate_reference(adapter, ids, rollout="flow") if materialise else gate_fast(adapter, ids, "flow", None)
    assert abs(float(M.sum()) - 1) < 1e-4
    print(hwm_mib() - base)
    """
)


def peak_mib(n: int, materialise: bool) -> float:
    return float(live_memory_child(CHILD, n, 1 if materialise else 0))


def test_gate_peak_memory_at_4096_tokens_is_far_below_attention_maps():
    n, L, H = 4096, 2, 4
    maps_mib = L * H * n * n * 4 / 2**20  # 512 MiB of float32 attention probabilities
    fast = peak_mib(n, materialise=False)
    # The chunked rollout's tiles take a fixed 64 MiB budget; everything else is O(L·n·d).
    assert fast < maps_mib / 4, f"gate used {fast:.0f} MiB; the attention maps alone are {maps_mib:.0f} MiB"
    # Control: the materialising reference really does grow with n², so the measurement can fail.
    slow = peak_mib(1024, materialise=True)
    assert slow > L * H * 1024 * 1024 * 4 / 2**20
