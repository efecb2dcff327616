"""The bookkeeping of the evaluation's post-hoc scripts (benchmarks/eval/): numbers checked by hand on small
inputs. The model runs they summarise are in results.jsonl files, not here."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

EVAL = Path(__file__).resolve().parents[2] / "benchmarks" / "eval"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", EVAL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_passage_view_counts_only_passage_tokens():
    """Tokens: distractor, support (the answer), distractor, question, cue. The question and cue hold most of
    the mass; inside the passage the support has 4 of 6, the top passage token is the answer."""
    view = _script("within_passage").passage_view
    support = torch.tensor([False, True, False, False, False])
    distractor = torch.tensor([True, False, True, False, False])
    gold = torch.tensor([False, True, False, False, False])
    a = torch.tensor([1.0, 4.0, 1.0, 10.0, 4.0], dtype=torch.float64)
    out = view(a, support, distractor, gold)
    assert out["passage_dsa"] == pytest.approx((4 - 2) / 6)
    assert out["top_is_answer"] and out["top_in_support"]
    assert out["outside_share"] == pytest.approx(14 / 20)
    # negative scores count as 0 (as in DSA's shares); a passage without mass has no top token
    out = view(torch.tensor([-5.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64), support, distractor, gold)
    assert out["passage_dsa"] == 0.0 and not out["top_is_answer"] and out["outside_share"] == 1.0


def test_split_by_reads_any_key_of_the_data(tmp_path):
    values = _script("paired")._data_values
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"id": f"e{i}", "support_first": i % 2 == 0}) for i in range(3)))
    assert values(str(p), "support_first") == {"e0": True, "e1": False, "e2": True}
    with pytest.raises(SystemExit, match="not a key"):
        values(str(p), "where")


def test_per_prompt_means_and_the_authors_log_ratio():
    """Two prompts of two positions; a prompt missing a position does not count for that method."""
    pp = _script("per_prompt")
    prompt_of = {"a/0": "a", "a/2": "a", "b/0": "b", "b/2": "b"}
    positions = {"a": 2, "b": 2}

    def rec(i, heta, rand):
        return {"id": i, "methods": {"heta_default": {"soft_nc": heta, "soft_ns": heta / 2},
                                     "random": {"soft_nc": rand, "soft_ns": float("nan")}}}

    records = [rec("a/0", 0.8, 0.4), rec("a/2", 0.6, 0.4), rec("b/0", 0.2, 0.5)]
    means = pp.prompt_means(records, prompt_of, positions)
    assert means["heta_default"]["soft_nc"] == pytest.approx({"a": 0.7})  # b lacks a position
    records.append(rec("b/2", 0.4, 0.3))
    means = pp.prompt_means(records, prompt_of, positions)
    assert means["heta_default"]["soft_nc"] == pytest.approx({"a": 0.7, "b": 0.3})
    assert means["random"]["soft_ns"] == {}  # NaN everywhere: no prompt
    lines = pp.report(means, "heta_default")
    row = next(x for x in lines if x.startswith("| heta_default | 2 |"))
    assert "0.500 ± 0.200" in row and f"{math.log(1.0 / 0.8):+.3f}" in row  # Σ 0.7 + 0.3 over Σ 0.4 + 0.4
    diff = next(x for x in lines if x.startswith("| random | 2 / 0 |"))  # Soft-NC on 2 prompts, Soft-NS on none
    assert "+0.100 ± 0.200 | 1/2" in diff
