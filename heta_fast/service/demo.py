"""The Gradio web demo (``heta-fast demo``): paste text, pick the target token, see the context shaded.

It runs inside the JSON service's FastAPI app (mounted at ``/demo``) and shares its
:class:`~heta_fast.service.app.AttributionService`, so the API and the page use one model and one lock.
Element ids (``heta-text``, ``heta-run``, ``heta-heatmap``, ...) are stable for the browser test.
"""

from __future__ import annotations

import os
import tempfile

import gradio as gr

from ..options import PRESETS
from ..report import heatmap_html, write_report
from ..result import Attribution
from .attribution import AttributionService
from .errors import FieldError, ServiceBusy

EXAMPLE = "The capital of France is Paris"
TOPK_HEADERS = ["pos", "token", "score", "M", "S", "I"]
DEMO_CSS = ".tok{border-radius:3px;padding:1px 0} #heta-heatmap p.text{font-size:1.3em}" \
           " #heta-heatmap h2{font-size:1.1em}"


def _target_choices(service: AttributionService, text: str):
    """Dropdown update listing every token that has context before it; the last one selected."""
    if not text or not text.strip():
        return gr.update(choices=[], value=None)
    toks = service.tokenize(text)[1:]  # position 0 has no context
    choices = [(f"{t['position']}: {t['token']!r}", t["position"]) for t in toks]
    return gr.update(choices=choices, value=choices[-1][1] if choices else None)


def _topk_rows(res: Attribution, by: str, k: int = 10) -> list[list]:
    rows = []
    for i, tok, _ in res.topk(k, by=by):
        comps = [getattr(res, c)[i] if getattr(res, c) is not None else None for c in ("scores", "M", "S", "I")]
        rows.append([i, repr(tok), *[None if v is None else float(f"{v:.4g}") for v in comps]])
    return rows


def _views(res: Attribution, by: str):
    """Heatmap HTML and top-k rows for ``by`` (falls back to the score if that component is missing)."""
    if getattr(res, by) is None:
        by = "scores"
    return heatmap_html(res, by), _topk_rows(res, by)


def _gr_error(e: Exception) -> gr.Error:
    field = getattr(e, "field", "")
    return gr.Error(f"{field}: {e}" if field else str(e))


def _layers_text(layers) -> str:
    """The ``layers`` option as the demo's text field shows it."""
    return "all" if layers is None else str(layers)


def _layers_value(text) -> int | str | None:
    """The text field back to the option (a bad value reaches the service, whose error names the field)."""
    text = str(text).strip().lower()
    if text in ("all", "0", ""):
        return None
    return int(text) if text.isdigit() else text


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
        )

    def run(text, target, num_probes, hessian, rank, layers, window, seed, by):
        options = {"num_probes": int(num_probes), "hessian": hessian, "rank": int(rank), "seed": int(seed or 0),
                   "layers": _layers_value(layers), "window": int(window) or None}
        try:
            res = service.attribute(text=text, target=None if target is None else int(target), options=options)
        except (FieldError, ServiceBusy) as e:
            raise _gr_error(e) from e
        heat, rows = _views(res, by)
        json_path = os.path.join(out_dir, f"heta_attribution_{abs(hash((text, target)))}.json")
        res.to_json(json_path)
        report_path = json_path[:-5] + ".html"
        write_report(res, report_path)
        t = res.timings
        summary = (f"Explained **{res.target_token!r}** at position {res.target_position} "
                   f"(log p = {res.target_logprob:.3f}) in {t.get('total', 0):.2f} s: "
                   + ", ".join(f"{k} {v:.2f} s" for k, v in t.items() if k != "total"))
        return heat, rows, [json_path, report_path], summary, res.to_dict()

    def reshade(state, by):
        if not state:
            return gr.update(), gr.update()
        return _views(Attribution.from_dict(state), by)

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
                with gr.Accordion("Options", open=False):
                    preset = gr.Dropdown(list(PRESETS), value="default", label="Preset (fills the fields below)")
                    num_probes = gr.Slider(1, 32, value=defaults.num_probes, step=1, label="Probes per token (m)")
                    hessian = gr.Radio(["exact", "lowrank"], value=defaults.hessian, label="Hessian")
                    rank = gr.Slider(1, 128, value=defaults.rank, step=1, label="Rank (lowrank)")
                    layers = gr.Textbox(value=_layers_text(defaults.layers), label="Last K layers (auto = the last 6, all = every layer)")
                    window = gr.Number(value=defaults.window or 0, precision=0, label="Window (0 = none)")
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
                run_btn = gr.Button("Explain", variant="primary", elem_id="heta-run")
            with gr.Column(scale=4):
                by = gr.Radio(["scores", "M", "S", "I"], value="scores", label="Shade by", elem_id="heta-by")
                status = gr.Markdown(elem_id="heta-status")
                heat = gr.HTML(elem_id="heta-heatmap")
                topk = gr.Dataframe(headers=TOPK_HEADERS, label="Top tokens", interactive=False, elem_id="heta-topk")
                files = gr.File(label="Download (JSON, HTML report)", file_count="multiple", elem_id="heta-files")

        text.change(lambda s: _target_choices(service, s), text, target)
        demo.load(lambda s: _target_choices(service, s), text, target)
        gen_btn.click(generate, [text, n_new], text)
        preset.change(apply_preset, preset, [num_probes, hessian, rank, layers, window])
        run_btn.click(run, [text, target, num_probes, hessian, rank, layers, window, seed, by],
                      [heat, topk, files, status, state])
        by.change(reshade, [state, by], [heat, topk])
    # One event at a time: the model sits behind the service lock anyway; this keeps the queue visible.
    demo.queue(default_concurrency_limit=1)
    return demo
