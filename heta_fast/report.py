"""Standalone reports: one HTML file with the heatmaps of the score and of M, S, I, and PNG plots.

Builds on :meth:`Attribution.to_html` (one heatmap per component) and adds what a reader of a saved
report needs: the target, the model, every option and timing, a table of all components, and a bar plot
of the scores embedded as a PNG (so the file has no external resources and opens offline).

    from heta_fast.report import write_report, plot_scores
    write_report(result, "report.html")          # Attribution or AttributionSequence
    plot_scores(result, "scores.png")            # one bar chart per component
"""

from __future__ import annotations

import base64
import html
import io
import json
import re

from .result import COMPONENT_LABELS as _LABELS
from .result import COMPONENT_NAMES as COMPONENTS
from .result import Attribution, AttributionSequence

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
    " .tok{border-radius:3px;padding:1px 0} table{border-collapse:collapse;margin:.5em 0}"
    " td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td.t{text-align:left;font-family:monospace}"
    " .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}"
    " .card{border:1px solid #ddd;border-radius:6px;padding:0 1em} .card h2{font-size:1.1em}"
    " .meta{font-size:.9em;color:#444} pre{background:#f6f6f6;padding:.5em;overflow:auto}"
    " img.plot{max-width:100%}"
)


def _present(result: Attribution, components=COMPONENTS) -> list[str]:
    """Components with at least one value (with units, token S/I/scores exist for refined tokens only)."""
    return [c for c in components if getattr(result, c) is not None and any(v is not None for v in getattr(result, c))]


def _tick_label(tok: str) -> str:
    # Matplotlib treats "$...$" as math text; newlines would break the axis.
    return tok.replace("$", r"\$").replace("\n", "⏎").replace("\t", "⇥")


def plot_scores(result: Attribution, path: str | None = None, *, components=COMPONENTS, dpi: int = 100) -> bytes:
    """Bar charts of the score and each computed component over the context tokens.

    Args:
        result: one :class:`Attribution`.
        path: also write the PNG there.
        components: which of ``scores``, ``M``, ``S``, ``I`` to plot (missing ones are skipped).
        dpi: resolution.

    Returns:
        The PNG file's bytes.
    """
    # Figure + Agg canvas directly: no pyplot, so no global backend or figure registry is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _present(result, components)
    if not names:
        raise ValueError("nothing to plot: none of the requested components was computed")
    n = len(result.tokens)
    width = min(24.0, max(6.0, 0.22 * n + 2))
    fig = Figure(figsize=(width, 1.9 * len(names) + 1.2), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    xs = list(range(n))
    for ax, name in zip(axes, names, strict=True):
        vals = [0.0 if v is None else v for v in getattr(result, name)]  # not computed (outside refined units)
        hi = max(max(vals), 1e-30)
        colors = [(0.0, 0.5, 0.0, min(1.0, 0.25 + 0.75 * max(0.0, v) / hi)) for v in vals]  # darker = more influence
        ax.bar(xs, vals, color=colors, width=0.85)
        ax.set_ylabel(name)
        ax.set_title(_LABELS[name], fontsize=9, loc="left")
        ax.margins(x=0.005)
        ax.grid(axis="y", alpha=0.3)
    last = axes[-1]
    if n <= 120:  # beyond that, labels would overlap: positions only
        last.set_xticks(xs)
        last.set_xticklabels([_tick_label(t) for t in result.tokens], rotation=90, fontsize=8)
    else:
        last.set_xlabel("context position")
    fig.suptitle(f"HETA attribution of {result.target_token!r} at position {result.target_position}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def heatmap_html(result: Attribution, by: str = "scores", title: str | None = None) -> str:
    """The heatmap of :meth:`Attribution.to_html` for ``by``, without its top-10 table.

    That table ranks by the score whatever ``by`` is; reports and the demo show one table with every
    component instead.
    """
    body = result.to_html(by=by, title=title, full_page=False)
    return re.sub(r"(<h3>[^<]*</h3>)?<table>.*?</table>", "", body, flags=re.S)


def _component_table(result: Attribution, top: int) -> str:
    names = _present(result)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for i, tok, _ in result.topk(top):
        cells = "".join(f"<td>{getattr(result, n)[i]:.4g}</td>" for n in names)
        rows.append(f"<tr><td>{i}</td><td class='t'>{html.escape(repr(tok))}</td>{cells}</tr>")
    return f"<table><tr><th>pos</th><th>token</th>{head}</tr>{''.join(rows)}</table>"


def _unit_table(result: Attribution, top: int) -> str:
    """The best units: rank, kind, token range, text, score, M, S, I."""
    rows = []
    for u in result.top_units(top):
        cells = "".join(f"<td>{'-' if getattr(u, n) is None else format(getattr(u, n), '.4g')}</td>"
                        for n in ("score", "M", "S", "I"))
        rows.append(f"<tr><td>{u.rank}</td><td>{html.escape(u.kind)}{' (refined)' if u.refined else ''}</td>"
                    f"<td>{u.token_range[0]}–{u.token_range[1] - 1}</td><td class='t'>{html.escape(u.text.strip())}</td>"
                    f"{cells}</tr>")
    return ("<table><tr><th>rank</th><th>kind</th><th>tokens</th><th>text</th><th>score</th><th>M</th><th>S</th>"
            f"<th>I</th></tr>{''.join(rows)}</table>")


def _section(result: Attribution, *, plot: bool, top: int) -> str:
    logp = f"{result.target_logprob:.3f}" if result.target_logprob is not None else "n/a"
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    meta = (
        f"<p class='meta'>target <b>{html.escape(repr(result.target_token))}</b> (id {result.target_id}) at "
        f"position {result.target_position}, log p = {logp}; model {html.escape(str(result.model))}; "
        f"seed {result.seed}; {html.escape(timings)}</p>"
    )
    cards = "".join(
        f"<div class='card'>{heatmap_html(result, name, _LABELS[name])}</div>"
        for name in _present(result)
    )
    img = ""
    if plot:
        png = base64.b64encode(plot_scores(result)).decode("ascii")
        img = f"<h3>Scores by position</h3><img class='plot' alt='scores plot' src='data:image/png;base64,{png}'>"
    opts = html.escape(json.dumps(result.options, indent=1))
    tables = f"<h3>Top {top} tokens by score</h3>{_component_table(result, top)}"
    if result.units:
        tables = f"<h3>Top {top} units by score</h3>{_unit_table(result, top)}" + (
            tables.replace("tokens by score", "refined tokens by score") if result.topk(1) else "")
    return (
        f"<section>{meta}{tables}"
        f"<div class='grid'>{cards}</div>{img}<details><summary>options</summary><pre>{opts}</pre></details>"
        "</section>"
    )


def report_html(result: Attribution | AttributionSequence, *, title: str | None = None, plot: bool = True,
                top: int = 10) -> str:
    """A self-contained HTML page (no external resources) for one result or a sequence of them.

    Args:
        result: an :class:`Attribution`, or an :class:`AttributionSequence` (one section per target).
        title: page heading.
        plot: embed the PNG bar plot of each component (needs matplotlib).
        top: rows of the top-k table.
    """
    items = list(result) if isinstance(result, AttributionSequence) else [result]
    heading = title or "HETA attribution report"
    sections = []
    for a in items:
        sub = f"<h2>Target {html.escape(repr(a.target_token))}</h2>" if len(items) > 1 else ""
        sections.append(sub + _section(a, plot=plot, top=top))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(heading)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(heading)}</h1>"
        "<p class='meta'>Darker green = more influence on the target. Each heatmap is shaded by its own component "
        "(scaled to its maximum); hover a token for all its values.</p>"
        f"{''.join(sections)}</body></html>"
    )


def write_report(result: Attribution | AttributionSequence, path: str, **kw) -> str:
    """Write :func:`report_html` to ``path``; returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(report_html(result, **kw))
    return path
