"""The Gradio web demo (``heta-fast demo``): paste text, pick the target token, see the context shaded.

It runs inside the JSON service's FastAPI app (mounted at ``/demo``) and shares its
:class:`~heta_fast.service.app.AttributionService`, so the API and the page use one model and one lock.
Element ids (``heta-text``, ``heta-run``, ``heta-heatmap``, ``heta-topunits``, ...) are stable for the browser test.

What the page does with the fields and with a result is in plain module-level functions
(:func:`demo_options`, :func:`token_rows`, :func:`unit_rows`, :func:`summary`, :func:`views`), tested without a browser.
"""

from __future__ import annotations

import os
import re
import tempfile

import gradio as gr

from ..options import PRESETS
from ..report import heatmap_html, write_report
from ..result import Attribution
from .attribution import AttributionService
from .errors import FieldError, ServiceBusy

EXAMPLE = "The capital of France is Paris"
TOP_K = 10  # rows of the token and unit tables
TOPK_HEADERS = ["pos", "token", "score", "M", "S", "I"]
UNIT_HEADERS = ["rank", "kind", "chars", "tokens", "text", "score", "M", "S", "I"]
UNIT_CHOICES = ("token", "sentence", "paragraph", "spans")
UNIT_TEXT_CHARS = 80  # a unit's text in the table is cut to this many characters (the heatmap tooltip has it all)
DEMO_CSS = ".tok{border-radius:3px;padding:1px 0} #heta-heatmap p.text{font-size:1.3em}" \
           " #heta-heatmap h2{font-size:1.1em} #heta-heatmap .unit{border-left:2px solid #888;padding-left:1px}"
_SPAN = re.compile(r"\s*(\d+)\s*[-:–]\s*(\d+)\s*")


# ------------------------------------------------------------------------------- fields -> options
def _layers_text(layers) -> str:
    """The ``layers`` option as the demo's text field shows it."""
    return "all" if layers is None else str(layers)


def _layers_value(text) -> int | str | None:
    """The text field back to the option (a bad value reaches the service, whose error names the field)."""
    text = str(text).strip().lower()
    if text in ("all", "0", ""):
        return None
    return int(text) if text.isdigit() else text


def spans_text(spans) -> str:
    """Character spans as the Spans field shows them: ``"0-40, 41-90"`` (empty for None)."""
    return ", ".join(f"{a}-{b}" for a, b in spans or ())


def parse_spans(text: str | None) -> list[tuple[int, int]] | None:
    """The Spans field (``"0-40, 41-90"``; ``0:40`` also reads) as ``(start, end)`` pairs, None when empty.

    Only the spelling is checked here; the service checks the spans themselves (order, overlap, inside the text).

    Raises:
        FieldError: ``options.spans``, quoting the part that is not a ``START-END`` pair.
    """
    parts = [p for p in (text or "").split(",") if p.strip()]
    spans = []
    for part in parts:
        m = _SPAN.fullmatch(part)
        if m is None:
            raise FieldError("options.spans", f"cannot read {part.strip()!r} as a character span: write START-END "
                             "pairs of character offsets separated by commas, e.g. 0-40, 41-90")
        spans.append((int(m[1]), int(m[2])))
    return spans or None


def demo_options(*, num_probes, hessian, rank, layers, window, seed, units="token", spans="", refine=0) -> dict:
    """The ``options`` of a service request from the demo's fields (numbers as Gradio gives them: floats).

    ``spans`` (the Spans field) is read only with ``units="spans"``, and must then be given; ``refine`` 0 is off.
    Every option the fields set is sent, so the page, not the server's defaults, decides them.

    Raises:
        FieldError: naming the option (``options.spans``, ``options.refine``) when a field cannot be read.
    """
    if units not in UNIT_CHOICES:
        raise FieldError("options.units", f"units must be one of {', '.join(UNIT_CHOICES)}, got {units!r}")
    parsed = parse_spans(spans)
    if units == "spans" and parsed is None:
        raise FieldError("options.spans", "Units is 'spans' but the Spans field is empty: give character spans "
                         "such as 0-40, 41-90")
    if units != "spans" and parsed is not None:
        raise FieldError("options.spans", f"spans are units of their own: choose Units 'spans' to use them, or "
                         f"clear the Spans field to score by {units}")
    if units != "token" and int(window or 0):
        raise FieldError("options.window", f"Units '{units}' are scored over the whole text in one window: set Window "
                         "to 0, or choose Units 'token' to use windows")
    refine = int(refine or 0)
    if refine < 0:
        raise FieldError("options.refine", f"refine must be 0 (off) or a number of units >= 1, got {refine}")
    return {"num_probes": int(num_probes), "hessian": hessian, "rank": int(rank), "seed": int(seed or 0),
            "layers": _layers_value(layers), "window": int(window or 0) or None,
            "units": units, "spans": parsed, "refine": refine or None}


# ------------------------------------------------------------------------------- result -> views
def _known(values) -> bool:
    """Whether a per-token component has any value (with units, token S, I and scores exist only if refined)."""
    return values is not None and any(v is not None for v in values)


def _num(v):
    return None if v is None else float(f"{v:.4g}")


def token_rows(res: Attribution, by: str, k: int = TOP_K) -> tuple[list[list], str]:
    """Rows of the top-tokens table (pos, token, score, M, S, I) and the table's label.

    Ranked by ``by`` where it has token values, else by the score, else by M: with units and no ``refine``
    only the gate M is per token, and with ``refine`` the other components exist for the refined tokens only.
    """
    rank_by = next((c for c in (by, "scores", "M") if _known(getattr(res, c))), None)
    if rank_by is None:
        return [], "Top tokens (no per-token values)"
    rows = [[i, repr(tok), *(_num(None if getattr(res, c) is None else getattr(res, c)[i])
                             for c in ("scores", "M", "S", "I"))]
            for i, tok, _ in res.topk(k, by=rank_by)]
    name = "score" if rank_by == "scores" else rank_by
    if res.units and rank_by != "M":
        return rows, f"Top refined tokens by {name}"
    if rank_by != by:
        why = "token S, I and scores need Refine > 0" if res.units else f"{by} was not computed"
        return rows, f"Top tokens by {name} ({why})"
    return rows, f"Top tokens by {name}"


def _shortened(text: str, n: int = UNIT_TEXT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _range_text(span) -> str:
    return "" if span is None else f"{span[0]}–{span[1]}"


def unit_rows(res: Attribution, k: int = TOP_K) -> list[list]:
    """Rows of the top-units table (rank, kind, chars, tokens, text, score, M, S, I); empty without units.

    ``chars`` is the character span ``start–end`` (end exclusive), ``tokens`` the context positions
    ``first–last``; a refined unit's kind says so.
    """
    if not res.units:
        return []
    return [[u.rank, u.kind + (" (refined)" if u.refined else ""), _range_text(u.char_span),
             f"{u.token_range[0]}–{u.token_range[1] - 1}", _shortened(u.text),
             _num(u.score), _num(u.M), _num(u.S), _num(u.I)]
            for u in res.top_units(k)]


def summary(res: Attribution) -> str:
    """The status line: the target, its log-probability, the seconds per stage, and the units if any."""
    t = res.timings
    text = (f"Explained **{res.target_token!r}** at position {res.target_position} "
            f"(log p = {res.target_logprob:.3f}) in {t.get('total', 0):.2f} s: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in t.items() if k != "total"))
    if res.units:
        refined = sum(u.refined for u in res.units)
        text += (f"; scored {len(res.units)} units ({res.options.get('units', 'spans')})"
                 + (f", the tokens of the best {refined} one by one" if refined else ""))
    return text


def views(res: Attribution, by: str) -> tuple[str, list[list], str, list[list]]:
    """Heatmap HTML shaded by ``by`` (by the score if that component is missing), the top-tokens rows and
    label, and the top-units rows. With units the heatmap shades each unit by its value (M: token by token)."""
    shade = by if getattr(res, by) is not None else "scores"
    rows, label = token_rows(res, by)
    return heatmap_html(res, shade), rows, label, unit_rows(res)


def _gr_error(e: Exception) -> gr.Error:
    field = getattr(e, "field", "")
    return gr.Error(f"{field}: {e}" if field else str(e))


def _target_choices(service: AttributionService, text: str):
    """Dropdown update listing every token that has context before it; the last one selected."""
    if not text or not text.strip():
        return gr.update(choices=[], value=None)
    toks = service.tokenize(text)[1:]  # position 0 has no context
    choices = [(f"{t['position']}: {t['token']!r}", t["position"]) for t in toks]
    return gr.update(choices=choices, value=choices[-1][1] if choices else None)


def build_demo(service: AttributionService) -> gr.Blocks:
    """The Gradio Blocks app for ``service`` (mount it with ``gr.mount_gradio_app`` or ``launch()`` it)."""
    defaults = service.attributor.options
    out_dir = tempfile.mkdtemp(prefix="heta_demo_")

    def generate(text: str, n_new: float):
        try:
            seq = service.attribute(text=text, generate=int(n_new), options={"components": ["M"]})
        except (FieldError, ServiceBusy) as e:
            raise _gr_error(e) from e
        return text + "".join(r.target_token for r in seq)

    def apply_preset(name: str):
        o = PRESETS[name]
        return (
            o.get("num_probes", defaults.num_probes), o.get("hessian", defaults.hessian),
            o.get("rank", defaults.rank), _layers_text(o.get("layers", defaults.layers)), o.get("window", defaults.window) or 0,
            o.get("units", defaults.units),
        )

    def shown(res: Attribution, by: str):
        heat, rows, label, units = views(res, by)
        return heat, gr.update(value=rows, label=label), gr.update(value=units, visible=bool(units))

    def run(text, target, preset_name, num_probes, hessian, rank, layers, window, seed, units, spans, refine, by):
        try:
            options = demo_options(num_probes=num_probes, hessian=hessian, rank=rank, layers=layers, window=window,
                                   seed=seed, units=units, spans=spans, refine=refine)
            # The preset supplies the options the page has no field for (lowrank_passes, max_memory, ...).
            res = service.attribute(text=text, target=None if target is None else int(target),
                                    preset=None if preset_name in (None, "default") else preset_name, options=options)
        except (FieldError, ServiceBusy) as e:
            raise _gr_error(e) from e
        json_path = os.path.join(out_dir, f"heta_attribution_{abs(hash((text, target)))}.json")
        res.to_json(json_path)
        report_path = json_path[:-5] + ".html"
        write_report(res, report_path)
        return (*shown(res, by), [json_path, report_path], summary(res), res.to_dict())

    def reshade(state, by):
        if not state:
            return gr.update(), gr.update(), gr.update()
        return shown(Attribution.from_dict(state), by)

    with gr.Blocks(title="heta_fast: HETA token attribution") as demo:
        gr.Markdown(
            f"## HETA token attribution · `{service.model_name}`\n"
            "Paste text (optionally let the model continue it), choose the token to explain, and run. "
            "Context tokens are shaded by their influence on it: **darker green = more influence**."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                text = gr.Textbox(label="Text", value=EXAMPLE, lines=4, elem_id="heta-text")
                with gr.Row():
                    n_new = gr.Slider(1, 32, value=5, step=1, label="Tokens to generate", elem_id="heta-n-new")
                    gen_btn = gr.Button("Generate continuation", elem_id="heta-generate")
                target = gr.Dropdown(label="Target token (explained)", choices=[], elem_id="heta-target")
                with gr.Accordion("Options", open=False, elem_id="heta-options"):
                    preset = gr.Dropdown(list(PRESETS), value="default", label="Preset (fills the fields below)")
                    num_probes = gr.Slider(1, 32, value=defaults.num_probes, step=1, label="Probes per token (m)")
                    hessian = gr.Radio(["exact", "lowrank"], value=defaults.hessian, label="Hessian")
                    rank = gr.Slider(1, 128, value=defaults.rank, step=1, label="Rank (lowrank)")
                    layers = gr.Textbox(value=_layers_text(defaults.layers), label="Last K layers (auto = the last 6, all = every layer)")
                    window = gr.Number(value=defaults.window or 0, precision=0, label="Window (0 = none)")
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
                    units = gr.Radio(list(UNIT_CHOICES), value=defaults.units, elem_id="heta-units",
                                     label="Units: score tokens, sentences, paragraphs or your spans (units run in one window)")
                    spans = gr.Textbox(value=spans_text(defaults.spans), elem_id="heta-spans",
                                       label="Spans: character offsets START-END, e.g. 0-40, 41-90 (Units 'spans')")
                    refine = gr.Number(value=defaults.refine or 0, precision=0, minimum=0, elem_id="heta-refine",
                                       label="Refine: score the k best units token by token (0 = off)")
                run_btn = gr.Button("Explain", variant="primary", elem_id="heta-run")
            with gr.Column(scale=4):
                by = gr.Radio(["scores", "M", "S", "I"], value="scores", label="Shade by", elem_id="heta-by")
                status = gr.Markdown(elem_id="heta-status")
                heat = gr.HTML(elem_id="heta-heatmap")
                topunits = gr.Dataframe(headers=UNIT_HEADERS, label="Top units", interactive=False, visible=False,
                                        elem_id="heta-topunits")
                topk = gr.Dataframe(headers=TOPK_HEADERS, label="Top tokens", interactive=False, elem_id="heta-topk")
                files = gr.File(label="Download (JSON, HTML report)", file_count="multiple", elem_id="heta-files")

        text.change(lambda s: _target_choices(service, s), text, target)
        demo.load(lambda s: _target_choices(service, s), text, target)
        gen_btn.click(generate, [text, n_new], text)
        preset.change(apply_preset, preset, [num_probes, hessian, rank, layers, window, units])
        # Typing spans means scoring them: pick Units 'spans' (the field is read only then).
        spans.input(lambda s, u: "spans" if s.strip() else u, [spans, units], units)
        run_btn.click(run, [text, target, preset, num_probes, hessian, rank, layers, window, seed, units, spans, refine, by],
                      [heat, topk, topunits, files, status, state])
        by.change(reshade, [state, by], [heat, topk, topunits])
    # One event at a time: the model sits behind the service lock anyway; this keeps the queue visible.
    demo.queue(default_concurrency_limit=1)
    return demo
