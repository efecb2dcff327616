"""The attribution result: components, tokens, provenance, and its JSON / HTML / terminal views."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

SCHEMA_VERSION = "1.1"  # 1.1: sink_gate_mass


def floats(x) -> list[float] | None:
    """A tensor or sequence as a list of Python floats (None stays None): the form results store."""
    if x is None:
        return None
    return [float(v) for v in x.detach().cpu().double().tolist()] if hasattr(x, "detach") else [float(v) for v in x]


@dataclass
class Attribution:
    """HETA attribution of one target token over its context (positions 0 … t-1).

    Attributes:
        tokens: context tokens as text (from the character offsets when the input was text).
        token_ids: context token ids.
        offsets: ``(start, end)`` character offsets of each context token in ``text`` (None for ids).
        target_position: t, the explained position; the logits at t-1 predict ``target_id``.
        M, S, I: gate, Hessian sensitivity and KL impact per context token (None if not computed).
        scores: ``M * (beta*S + gamma*I)`` per context token.
        options: every option used (``HetaOptions.to_dict()``), including the seed.
        timings: seconds per stage.
        sink_gate_mass: with a sink token (option ``sink_token``), the gate mass the sink took before it
            was dropped and M re-normalised over the real tokens (averaged over windows); else None.
    """

    tokens: list[str]
    token_ids: list[int]
    target_position: int
    target_id: int
    target_token: str
    scores: list[float]
    M: list[float] | None = None
    S: list[float] | None = None
    I: list[float] | None = None
    offsets: list[tuple[int, int]] | None = None
    text: str | None = None
    target_logprob: float | None = None
    options: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    model: str | None = None
    sink_gate_mass: float | None = None

    @property
    def seed(self) -> int | None:
        return self.options.get("seed")

    def topk(self, k: int = 10, by: str = "scores") -> list[tuple[int, str, float]]:
        """The k context positions with the largest value of ``by`` as ``(position, token, value)``."""
        vals = getattr(self, by)
        if vals is None:
            raise ValueError(f"component {by!r} was not computed")
        order = sorted(range(len(vals)), key=lambda i: vals[i], reverse=True)[:k]
        return [(i, self.tokens[i], vals[i]) for i in order]

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "text": self.text,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "offsets": [list(o) for o in self.offsets] if self.offsets is not None else None,
            "target": {
                "position": self.target_position,
                "token_id": self.target_id,
                "token": self.target_token,
                "logprob": self.target_logprob,
            },
            "scores": self.scores,
            "M": self.M,
            "S": self.S,
            "I": self.I,
            "options": self.options,
            "seed": self.seed,
            "timings": self.timings,
            "sink_gate_mass": self.sink_gate_mass,
        }

    def to_json(self, path: str | None = None, **kw) -> str:
        s = json.dumps(self.to_dict(), indent=kw.pop("indent", 2), **kw)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(s)
        return s

    @classmethod
    def from_dict(cls, d: dict) -> Attribution:
        tgt = d["target"]
        return cls(
            tokens=d["tokens"],
            token_ids=d["token_ids"],
            target_position=tgt["position"],
            target_id=tgt["token_id"],
            target_token=tgt["token"],
            target_logprob=tgt.get("logprob"),
            scores=d["scores"],
            M=d.get("M"),
            S=d.get("S"),
            I=d.get("I"),
            offsets=[tuple(o) for o in d["offsets"]] if d.get("offsets") is not None else None,
            text=d.get("text"),
            options=d.get("options", {}),
            timings=d.get("timings", {}),
            model=d.get("model"),
            sink_gate_mass=d.get("sink_gate_mass"),
        )

    # --------------------------------------------------------------------------------- views
    def _shades(self, by: str) -> list[float]:
        vals = getattr(self, by)
        if vals is None:
            raise ValueError(f"component {by!r} was not computed")
        hi = max(vals) if vals else 0.0
        lo = min(0.0, min(vals)) if vals else 0.0
        span = hi - lo
        return [(v - lo) / span if span > 0 else 0.0 for v in vals]

    def heatmap(self, by: str = "scores", color: bool = True) -> str:
        """Context tokens on a green background whose intensity follows ``by``; then the target."""
        parts = []
        for tok, s in zip(self.tokens, self._shades(by), strict=True):
            shown = tok.replace("\n", "⏎")
            if color:
                # 256-colour greens from pale (194) to dark (22): darker = more influence.
                ramp = [255, 194, 157, 120, 83, 46, 34, 28, 22]
                c = ramp[min(len(ramp) - 1, int(round(s * (len(ramp) - 1))))]
                fg = 15 if s > 0.6 else 0
                parts.append(f"\x1b[48;5;{c}m\x1b[38;5;{fg}m{shown}\x1b[0m")
            else:
                parts.append(f"{shown}[{s:.2f}]")
        target = f" → {self.target_token!r}"
        return "".join(parts) + target

    def to_html(self, by: str = "scores", title: str | None = None, full_page: bool = True) -> str:
        """Tokens shaded green by ``by`` (darker = more influence), with a table of all components."""
        spans = []
        for i, (tok, s) in enumerate(zip(self.tokens, self._shades(by), strict=True)):
            tip = f"pos {i}: score={self.scores[i]:.4g}"
            for name in ("M", "S", "I"):
                vals = getattr(self, name)
                if vals is not None:
                    tip += f", {name}={vals[i]:.4g}"
            fg = "#fff" if s > 0.6 else "#000"
            spans.append(
                f'<span class="tok" title="{html.escape(tip)}" data-pos="{i}" '
                f'style="background: rgba(0,128,0,{s:.3f}); color: {fg}">{html.escape(tok)}</span>'
            )
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(tok)}</td><td>{v:.4g}</td></tr>" for i, tok, v in self.topk(10, by=by)
        )
        body = (
            f'<div class="heta"><h2>{html.escape(title or "HETA attribution")}</h2>'
            f"<p>target <b>{html.escape(self.target_token)}</b> at position {self.target_position}"
            f" (shading: {html.escape(by)})</p>"
            f'<p class="text" style="white-space: pre-wrap; line-height: 1.8">{"".join(spans)}'
            f' <span style="border: 2px solid #333; padding: 0 2px">{html.escape(self.target_token)}</span></p>'
            f"<table><tr><th>pos</th><th>token</th><th>{html.escape(by)}</th></tr>{rows}</table></div>"
        )
        if not full_page:
            return body
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>HETA attribution</title>"
            "<style>body{font-family:sans-serif;margin:2em} .tok{border-radius:3px;padding:1px 0}"
            " table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px}</style>"
            f"</head><body>{body}</body></html>"
        )

    def __str__(self) -> str:
        top = ", ".join(f"{tok!r}:{v:.3g}" for _, tok, v in self.topk(5))
        return f"Attribution(target={self.target_token!r} @ {self.target_position}, top=[{top}])"


class AttributionSequence(list):
    """One :class:`Attribution` per explained token of a continuation (teacher-forced or generated)."""

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "targets": [a.to_dict() for a in self]}

    def to_json(self, path: str | None = None) -> str:
        s = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(s)
        return s

    def to_html(self, by: str = "scores") -> str:
        bodies = "".join(a.to_html(by=by, title=f"target {a.target_token!r}", full_page=False) for a in self)
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>HETA attributions</title>"
            "<style>body{font-family:sans-serif;margin:2em} .tok{border-radius:3px}"
            " table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px}</style>"
            f"</head><body>{bodies}</body></html>"
        )

    def heatmap(self, by: str = "scores", color: bool = True) -> str:
        return "\n".join(a.heatmap(by=by, color=color) for a in self)
