"""HTML reports, PNG plots and the profiling helpers."""

import base64
import json
import re
from pathlib import Path

import pytest
import torch

from heta_fast import Attribution, AttributionSequence
from heta_fast.profiling import profile_attribution
from heta_fast.report import plot_scores, report_html, write_report
from heta_fast.testing import CharTokenizer

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_result(n=6, components=("M", "S", "I"), tokens=None):
    tokens = tokens or ["<s>", "The", " <b>cat</b>", " costs", " $5", "\n"][:n]
    M = [1.0 / n] * n if "M" in components else None
    S = [0.1 * (i + 1) for i in range(n)] if "S" in components else None
    I = [0.05 * (n - i) for i in range(n)] if "I" in components else None
    scores = [(M[i] if M else 1.0) * (0.5 * (S[i] if S else 0) + 0.5 * (I[i] if I else 0)) for i in range(n)]
    return Attribution(tokens=tokens, token_ids=list(range(n)), target_position=n, target_id=7, target_token=" sat",
                       scores=scores, M=M, S=S, I=I, target_logprob=-1.25, options={"seed": 3, "num_probes": 2},
                       timings={"gate": 0.1, "hessian": 0.2, "kl": 0.3, "total": 0.6}, model="tiny")


def test_plot_is_a_png_and_written_to_path(tmp_path):
    path = tmp_path / "scores.png"
    data = plot_scores(make_result(), str(path))
    assert data.startswith(PNG_MAGIC) and path.read_bytes() == data
    # Only computed components are plotted, so the picture is shorter without S and I.
    small = plot_scores(make_result(components=("M",)))
    assert small.startswith(PNG_MAGIC) and len(small) < len(data)


def test_plot_of_a_long_context_uses_positions():
    n = 300
    r = make_result(n=n, tokens=[f"t{i}" for i in range(n)])
    assert plot_scores(r).startswith(PNG_MAGIC)


def test_report_has_every_heatmap_and_is_self_contained(tmp_path):
    r = make_result()
    page = report_html(r, title="cat report")
    # One heatmap per component, each from Attribution.to_html.
    for label in ("score = M", "M (causal gate)", "S (Hessian sensitivity)", "I (KL impact)"):
        assert label in page
    assert page.count('class="tok"') == 4 * len(r.tokens)
    assert page.count("<table>") == 1  # one table with every component, not one per heatmap
    assert "&lt;b&gt;cat&lt;/b&gt;" in page and "<b>cat</b>" not in page  # token text is escaped
    assert "cat report" in page and "-1.250" in page and "seed 3" in page
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(png).startswith(PNG_MAGIC)
    assert not re.search(r"""(src|href)=['"]https?:""", page)  # no external resources
    path = write_report(r, str(tmp_path / "r.html"), plot=False)
    assert "data:image/png" not in Path(path).read_text(encoding="utf-8")


def test_report_skips_missing_components_and_handles_sequences():
    page = report_html(make_result(components=("M", "I")), plot=False)
    assert "S (Hessian sensitivity)" not in page and "I (KL impact)" in page
    seq = AttributionSequence([make_result(), make_result(n=4)])
    page = report_html(seq, plot=False)
    assert page.count("<section>") == 2 and page.count("<h2>Target ") == 2


# ---------------------------------------------------------------------------------------- profiling


@pytest.fixture(scope="module")
def attributor():
    from heta_fast import Attributor
    from heta_fast.testing import tiny_model

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster, and kinder to a shared machine
    yield Attributor(tiny_model("llama"), CharTokenizer())
    torch.set_num_threads(prev)


def test_track_sees_torch_allocations():
    # In a fresh process: inside a long test session the allocator may hand back pages that are already
    # resident, and the peak would (correctly) not move.
    import subprocess
    import sys

    code = (
        "import torch\nfrom heta_fast.profiling import track\n"
        "with track() as w:\n    x = torch.ones(64 * 2**20 // 4)\n    x += 1\n"
        "print(w.peak_rss_bytes is not None, w.wall_s > 0, w.peak_delta_bytes if w.peak_rss_bytes else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    has_proc, timed, delta = out.stdout.split()
    if has_proc != "True":
        pytest.skip("no /proc/self/status on this platform")
    assert timed == "True" and int(delta) > 48 * 2**20  # 64 MiB that tracemalloc would not see


def test_profile_attribution_stages_memory_and_trace(attributor, tmp_path):
    trace = tmp_path / "trace.json"
    prof = profile_attribution(attributor, "hello world", num_probes=2, trace=str(trace))
    assert set(prof.stages) >= {"gate", "hessian", "kl", "total", "wall"}
    assert prof.stages["wall"] >= prof.stages["total"] > 0
    assert prof.result.target_token == "d"
    if prof.memory.peak_rss_bytes is not None:
        assert prof.memory.peak_rss_bytes > 0
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name") == "heta_fast.attribute" for e in events)
    d = prof.to_dict()
    assert d["trace"] == str(trace) and "stages_s" in d
    assert prof.summary().startswith("profile: gate")


def test_profile_sums_stages_over_a_continuation(attributor):
    prof = profile_attribution(attributor, "abc", target="xy", num_probes=1)
    per = [r.timings["total"] for r in prof.result]
    assert len(per) == 2 and abs(prof.stages["total"] - sum(per)) < 1e-9
