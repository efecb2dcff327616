"""Experiment (issue 31, not the library's behaviour): the needle harness with three coarse levels instead of two.

    python benchmarks/eval/needle_levels4_experiment.py --tokens 8000 --depths 0.5 --distractors \\
        --methods heta_units --needle-range 0 1 --threads 2 --out benchmarks/eval/needle_levels4_8k_intel_smollm2

From 300 sentences on, ``coarse="auto"`` here makes blocks of blocks of blocks: with k = expand and n sentences,
the uniform model of ``heta_fast.units.levels`` scores B₁ + k·B₂/B₁ + k·B₃/B₂ + k·n/B₃ units, least at
B₁ = c, B₂ = c²/k, B₃ = c³/k² with c = ∜(k³·n) (4c units: 39.8 at n = 363, against 44.5 for two coarse levels).
Level 1, whose units are masked suffixes from anywhere in the document, gets 10 blocks instead of 15. Everything
else is ``benchmarks/eval/needle.py``; the result is in benchmarks/eval/README.md (*A third coarse level, tried*).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import heta_fast.api as api  # noqa: E402
import heta_fast.units.levels as lv  # noqa: E402

THREE_LEVELS_FROM = 300  # sentences


def three_coarse_levels(kind, fine, text, expand):
    n = len(fine)
    if kind != "auto" or n < THREE_LEVELS_FROM:
        return lv.coarse_levels(kind, fine, text, expand)
    c = (expand ** 3 * n) ** 0.25
    sizes = [u.end - u.start for u in fine]
    return lv.nested_blocks(sizes, lv._paragraph_labels(fine, text),
                            [round(c), round(c * c / expand), round(c ** 3 / expand ** 2)])


api.coarse_levels = three_coarse_levels

import needle  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "needle.py"
    needle.main()
