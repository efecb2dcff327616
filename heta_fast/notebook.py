"""Notebook display of results (``_repr_html_``): token heatmaps with a switch between score, M, S and I.

The HTML is self-contained: inline colours, one ``<style>`` block, no script, no external asset. The
switch is a group of CSS radio buttons, so it works where a notebook front end drops scripts; where
even ``<style>`` is dropped, every view is shown, one under the other, the score first.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence

from .result import COMPONENT_LABELS, COMPONENT_NAMES, Attribution

_SWITCH_LABELS = {"scores": "score", "M": "M", "S": "S", "I": "I"}


def _tooltip(r: Attribution, i: int) -> str:
    parts = [f"pos {i}"] + [f"{name}={getattr(r, name)[i]:.4g}" for name in COMPONENT_NAMES
                            if getattr(r, name) is not None]
    return ", ".join(parts)


def _line(r: Attribution, by: str) -> str:
    """One context's tokens shaded by ``by`` (darker green = more influence), then the boxed target."""
    spans = []
    for i, (tok, s) in enumerate(zip(r.tokens, r.shades(by), strict=True)):
        fg = "#fff" if s > 0.6 else "#000"
        spans.append(f'<span title="{html.escape(_tooltip(r, i))}" style="background:rgba(0,128,0,{s:.3f});'
                     f'color:{fg};border-radius:3px">{html.escape(tok)}</span>')
    target = (f'<span title="target, position {r.target_position}" style="border:2px solid #333;padding:0 2px">'
              f"{html.escape(r.target_token)}</span>")
    return f'<div style="white-space:pre-wrap;line-height:1.9;margin:.2em 0">{"".join(spans)} → {target}</div>'


def _header(results: Sequence[Attribution]) -> str:
    if len(results) == 1:
        r = results[0]
        logp = "" if r.target_logprob is None else f", log p = {r.target_logprob:.3f}"
        head = f"HETA attribution of <b>{html.escape(repr(r.target_token))}</b> at position {r.target_position}{logp}"
    else:
        targets = ", ".join(html.escape(repr(r.target_token)) for r in results)
        head = f"HETA attributions of {len(results)} targets: {targets}"
    model = results[0].model
    if model:
        head += f" · model {html.escape(model)}"
    masses = [r.sink_gate_mass for r in results if r.sink_gate_mass is not None]
    if masses:
        head += f" · sink gate mass {sum(masses) / len(masses):.3f}"
    return f'<div style="font-size:.9em;color:#555;margin-bottom:.3em">{head}</div>'


def results_html(results: Sequence[Attribution]) -> str:
    """The notebook view of one or more results (one line per target), switchable between components."""
    if not results:
        return "<div>empty AttributionSequence (no targets)</div>"
    uid = "heta-" + uuid.uuid4().hex[:12]  # unique per rendering, so two outputs never share a radio group
    names = [n for n in COMPONENT_NAMES if all(getattr(r, n) is not None for r in results)]
    radios, rules, views = [], [f"#{uid} .heta-view{{display:none}}"], []
    for name in names:
        checked = " checked" if name == "scores" else ""
        radios.append(f'<input type="radio" name="{uid}" id="{uid}-{name}" class="heta-by-{name}"{checked}>'
                      f'<label for="{uid}-{name}" style="margin-right:.8em">{_SWITCH_LABELS[name]}</label>')
        rules.append(f"#{uid} .heta-by-{name}:checked ~ .heta-views .heta-view-{name}{{display:block}}")
        lines = "".join(_line(r, name) for r in results)
        views.append(f'<div class="heta-view heta-view-{name}" data-by="{name}">'
                     f'<div style="font-size:.8em;color:#777">shading: {html.escape(COMPONENT_LABELS[name])}</div>'
                     f"{lines}</div>")
    style = "<style>" + " ".join(rules) + "</style>"
    return (f'<div id="{uid}" class="heta-result" style="font-family:sans-serif">{style}{_header(results)}'
            f'{"".join(radios)}<div class="heta-views">{"".join(views)}</div></div>')
