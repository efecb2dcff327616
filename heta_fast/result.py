"""The attribution result: components, tokens, provenance, and its JSON / HTML / terminal views.

JSON files carry ``schema_version`` ("MAJOR.MINOR"). A minor version only adds optional fields, so a file
of any 1.x loads in every 1.y (fields it lacks get their defaults, fields it does not know are ignored);
a new major version means an incompatible layout, and loading it names the version and what to do.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

from .errors import HetaInputError

# 1.0: first release; 1.1: sink_gate_mass; 1.2: units (sentences, paragraphs, spans), null token values;
# 1.3: levels (coarse_units; a unit's scored, parent, level)
# 1.4: coarse units of several levels (blocks of blocks): a coarse unit's scored, parent and level
SCHEMA_VERSION = "1.4"
COMPONENT_NAMES = ("scores", "M", "S", "I")
COMPONENT_LABELS = {"scores": "score = M·(βS + γI)", "M": "M (causal gate)", "S": "S (Hessian sensitivity)",
                    "I": "I (KL impact)"}


class ResultFormatError(HetaInputError):
    """A saved result cannot be read: not JSON, a field missing or of the wrong kind, or a newer schema."""


def floats(x) -> list[float | None] | None:
    """A tensor or sequence as a list of Python floats (None stays None): the form results store.

    NaN (a value not computed: token S, I and scores outside the refined units) becomes None (JSON null).
    """
    if x is None:
        return None
    vals = x.detach().cpu().double().reshape(-1).tolist() if hasattr(x, "detach") else x
    return [None if v is None or v != v else float(v) for v in vals]


@dataclass
class Unit:
    """One unit of the context (a sentence, paragraph, span, gap between spans, or a special token; SPEC §6).

    Attributes:
        text: the unit's text (its character span of the input; the tokens' text for a special token).
        char_span: ``(start, end)`` character offsets of the span the unit was made from, None without text.
        token_range: context positions ``start … end − 1``.
        kind: ``"sentence"``, ``"paragraph"``, ``"span"``, ``"gap"`` or ``"special"``.
        score: ``M_u (β S_u + γ I_u)``; M, S, I: the unit's gate (summed over its tokens), sensitivity and
            KL impact (None if not computed).
        rank: 1 for the highest score (with levels: the scored units first, then the unscored ones).
        refined: whether its tokens were also scored one by one (option ``refine``); for a coarse unit, whether
            its units were scored (expanded).
        scored: False for a unit inside a coarse unit that was not expanded (option ``coarse``, SPEC §6): it
            was not scored; ``score`` is then its parent's score and S, I are None (M, the gate, is known).
        parent: with levels, the index of its coarse unit (the level above) in ``Attribution.coarse_units``.
        level: the level it belongs to: 1 for one level and for the coarsest units, each finer level one more
            (with two coarse levels, blocks 1, sub-blocks 2, units 3).
    """

    text: str
    char_span: tuple[int, int] | None
    token_range: tuple[int, int]
    kind: str
    score: float
    M: float | None = None
    S: float | None = None
    I: float | None = None
    rank: int = 0
    refined: bool = False
    scored: bool = True
    parent: int | None = None
    level: int = 1

    def to_dict(self) -> dict:
        return {"text": self.text, "char_span": None if self.char_span is None else list(self.char_span),
                "token_range": list(self.token_range), "kind": self.kind, "score": self.score, "M": self.M,
                "S": self.S, "I": self.I, "rank": self.rank, "refined": self.refined, "scored": self.scored,
                "parent": self.parent, "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> Unit:
        return cls(text=d["text"], char_span=None if d.get("char_span") is None else tuple(d["char_span"]),
                   token_range=tuple(d["token_range"]), kind=d.get("kind", "span"), score=d["score"],
                   M=d.get("M"), S=d.get("S"), I=d.get("I"), rank=d.get("rank", 0), refined=d.get("refined", False),
                   scored=d.get("scored", True), parent=d.get("parent"), level=d.get("level", 1))


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
        units: with ``units="sentence"|"paragraph"`` or ``spans``, one :class:`Unit` per unit in context
            order; then M stays per token, and S, I and scores per token are given for the tokens of the
            refined units only (``refine=k``; None elsewhere).
        coarse_units: with levels (option ``coarse``, SPEC §6), the coarse units (paragraphs or blocks, and
            blocks of blocks on long contexts) of every coarse level, coarsest first (``level`` says which);
            ``refined`` marks those whose units were scored, ``scored`` those scored themselves (every unit of
            level 1). None with one level.
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
    units: list[Unit] | None = None
    coarse_units: list[Unit] | None = None

    @property
    def seed(self) -> int | None:
        return self.options.get("seed")

    def topk(self, k: int = 10, by: str = "scores") -> list[tuple[int, str, float]]:
        """The k context positions with the largest value of ``by`` as ``(position, token, value)``."""
        vals = getattr(self, by)
        if vals is None:
            raise ValueError(f"component {by!r} was not computed")
        known = [i for i in range(len(vals)) if vals[i] is not None]  # with units: the refined tokens only
        order = sorted(known, key=lambda i: vals[i], reverse=True)[:k]
        return [(i, self.tokens[i], vals[i]) for i in order]

    def top_units(self, k: int = 10) -> list[Unit]:
        """The k units with the highest score, best first (an error without units)."""
        if not self.units:
            raise ValueError("this attribution has no units (run with units='sentence', 'paragraph' or spans=)")
        return sorted(self.units, key=lambda u: u.rank)[:k]

    def unit_of(self, position: int) -> Unit | None:
        """The unit holding context position ``position`` (None without units)."""
        for u in self.units or ():
            if u.token_range[0] <= position < u.token_range[1]:
                return u
        return None

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
            "units": None if self.units is None else [u.to_dict() for u in self.units],
            "coarse_units": None if self.coarse_units is None else [u.to_dict() for u in self.coarse_units],
        }

    def to_json(self, path: str | None = None, **kw) -> str:
        s = json.dumps(self.to_dict(), indent=kw.pop("indent", 2), **kw)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(s)
        return s

    @classmethod
    def from_dict(cls, d: dict) -> Attribution:
        """The result :meth:`to_dict` produced (any schema 1.x); :class:`ResultFormatError` if it is not one."""
        return _attribution_from_dict(d, where="attribution")

    @classmethod
    def load(cls, path) -> Attribution:
        """Read a result written by :meth:`to_json` (any schema 1.x)."""
        d = _read_json(path)
        if isinstance(d, dict) and "targets" in d and "target" not in d:
            raise ResultFormatError(f"{path} holds a sequence of {len(d['targets'])} attributions (a continuation): "
                                    "read it with AttributionSequence.load")
        return _attribution_from_dict(d, where=str(path))

    # --------------------------------------------------------------------------------- views
    def shades(self, by: str) -> list[float]:
        """Per-token shade in [0, 1] of ``by``; with units and ``by="scores"``, each token takes its unit's score
        (a unit levels left unscored takes none: its parent's score is on level 1's scale, not its own)."""
        if self.units and by in ("scores", "S", "I"):
            vals = [0.0] * len(self.tokens)
            for u in self.units:
                v = (u.score if u.scored else 0.0) if by == "scores" else getattr(u, by)
                for i in range(*u.token_range):
                    vals[i] = v or 0.0
        else:
            vals = getattr(self, by)
            if vals is None:
                raise ValueError(f"component {by!r} was not computed")
            vals = [0.0 if v is None else v for v in vals]
        hi = max(vals) if vals else 0.0
        lo = min(0.0, min(vals)) if vals else 0.0
        span = hi - lo
        return [(v - lo) / span if span > 0 else 0.0 for v in vals]

    def _tooltip(self, i: int) -> str:
        """Hover text of token i: its values, and with units the unit's rank, values and text."""
        tip = f"pos {i}"
        for name, vals in (("score", self.scores), ("M", self.M), ("S", self.S), ("I", self.I)):
            if vals is not None and vals[i] is not None:
                tip += f", {name}={vals[i]:.4g}"
        u = self.unit_of(i)
        if u is not None:
            tip += (f"\nunit #{u.rank} ({u.kind}): score={u.score:.4g}" if u.scored else
                    f"\nunit #{u.rank} ({u.kind}): not scored (its coarse unit was not expanded; that unit's "
                    f"score {u.score:.4g})")
            for name in ("M", "S", "I"):
                if getattr(u, name) is not None:
                    tip += f", {name}={getattr(u, name):.4g}"
            text = u.text.strip()
            tip += "\n" + (text if len(text) <= 300 else text[:297] + "...")
        return tip

    def heatmap(self, by: str = "scores", color: bool = True) -> str:
        """Context tokens on a green background whose intensity follows ``by``; then the target."""
        parts = []
        for tok, s in zip(self.tokens, self.shades(by), strict=True):
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
        starts = {u.token_range[0]: u for u in self.units or ()}
        for i, (tok, s) in enumerate(zip(self.tokens, self.shades(by), strict=True)):
            if i in starts:  # a unit boundary: a thin rule, so units can be told apart
                if i > 0:
                    spans.append("</span>")
                u = starts[i]
                spans.append(f'<span class="unit" data-rank="{u.rank}"{" data-refined" if u.refined else ""}>')
            fg = "#fff" if s > 0.6 else "#000"
            spans.append(
                f'<span class="tok" title="{html.escape(self._tooltip(i))}" data-pos="{i}" '
                f'style="background: rgba(0,128,0,{s:.3f}); color: {fg}">{html.escape(tok)}</span>'
            )
        if starts:
            spans.append("</span>")
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(tok)}</td><td>{v:.4g}</td></tr>" for i, tok, v in self.topk(10, by=by)
        )
        table = f"<table><tr><th>pos</th><th>token</th><th>{html.escape(by)}</th></tr>{rows}</table>"
        if self.units:
            unit_rows = "".join(
                f"<tr><td>{u.rank}</td><td>{html.escape(u.kind)}</td><td>{u.token_range[0]}–{u.token_range[1] - 1}</td>"
                f"<td class='utext'>{html.escape(u.text.strip())}</td><td>{u.score:.4g}</td>"
                + "".join(f"<td>{'' if getattr(u, c) is None else format(getattr(u, c), '.4g')}</td>" for c in "MSI")
                + "</tr>"
                for u in self.top_units(10)
            )
            table = (f"<h3>top units</h3><table><tr><th>rank</th><th>kind</th><th>tokens</th><th>text</th>"
                     f"<th>score</th><th>M</th><th>S</th><th>I</th></tr>{unit_rows}</table>"
                     + (f"<h3>refined tokens</h3>{table}" if rows else ""))
        body = (
            f'<div class="heta"><h2>{html.escape(title or "HETA attribution")}</h2>'
            f"<p>target <b>{html.escape(self.target_token)}</b> at position {self.target_position}"
            f" (shading: {html.escape(by)})</p>"
            f'<p class="text" style="white-space: pre-wrap; line-height: 1.8">{"".join(spans)}'
            f' <span style="border: 2px solid #333; padding: 0 2px">{html.escape(self.target_token)}</span></p>'
            f"{table}</div>"
        )
        if not full_page:
            return body
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>HETA attribution</title>"
            "<style>body{font-family:sans-serif;margin:2em} .tok{border-radius:3px;padding:1px 0}"
            " .unit{border-left:2px solid #888;padding-left:1px} .utext{max-width:40em}"
            " table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px}</style>"
            f"</head><body>{body}</body></html>"
        )

    def _repr_html_(self) -> str:
        """Notebook view: the heatmap with a score / M / S / I switch (self-contained HTML, no script)."""
        from .notebook import results_html

        return results_html([self])

    def to_captum(self, by: str = "scores"):
        """This result as Captum's ``LLMAttributionResult`` (needs the ``integrations`` extra: captum).

        One output token (the target) over the context tokens: ``seq_attr`` is ``by`` (the score by default),
        ``token_attr`` the same values as a ``[1, context]`` matrix, ``output_probs`` the target's probability.
        """
        from .integrations.captum import to_llm_attribution_result

        return to_llm_attribution_result([self], by=by)

    def __str__(self) -> str:
        if self.units:
            top = ", ".join(f"{u.text.strip()[:40]!r}:{u.score:.3g}" for u in self.top_units(3))
            return f"Attribution(target={self.target_token!r} @ {self.target_position}, top units=[{top}])"
        top = ", ".join(f"{tok!r}:{v:.3g}" for _, tok, v in self.topk(5))
        return f"Attribution(target={self.target_token!r} @ {self.target_position}, top=[{top}])"


class AttributionSequence(list):
    """One :class:`Attribution` per explained token of a continuation (teacher-forced or generated)."""

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "targets": [a.to_dict() for a in self]}

    @classmethod
    def from_dict(cls, d: dict) -> AttributionSequence:
        """The sequence :meth:`to_dict` produced (any schema 1.x); :class:`ResultFormatError` if it is not one."""
        return _sequence_from_dict(d, where="attribution sequence")

    @classmethod
    def load(cls, path) -> AttributionSequence:
        """Read a sequence written by :meth:`to_json` (any schema 1.x)."""
        d = _read_json(path)
        if isinstance(d, dict) and "target" in d and "targets" not in d:
            raise ResultFormatError(f"{path} holds a single attribution: read it with Attribution.load")
        return _sequence_from_dict(d, where=str(path))

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

    def _repr_html_(self) -> str:
        """Notebook view: one heatmap line per target, with a score / M / S / I switch (no script)."""
        from .notebook import results_html

        return results_html(list(self))

    def to_captum(self, by: str = "scores"):
        """These results as one Captum ``LLMAttributionResult`` (needs the ``integrations`` extra: captum).

        ``input_tokens`` are the context of the last target (the prompt and the continuation before it),
        ``output_tokens`` the targets, ``token_attr[k, j]`` the ``by`` value of context token j for target k
        (0 where j is not in target k's context, i.e. at or after the target), and ``seq_attr`` the sum of
        ``token_attr`` over targets (Captum's attribution of the whole continuation).
        """
        from .integrations.captum import to_llm_attribution_result

        return to_llm_attribution_result(list(self), by=by)


def load(path) -> Attribution | AttributionSequence:
    """Read a result file of either kind: :class:`Attribution` or, for a continuation, :class:`AttributionSequence`."""
    d = _read_json(path)
    if isinstance(d, dict) and "targets" in d and "target" not in d:
        return _sequence_from_dict(d, where=str(path))
    return _attribution_from_dict(d, where=str(path))


# ------------------------------------------------------------------------------------- reading JSON
def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ResultFormatError(f"{path} is not JSON ({e}); heta_fast results are written by to_json") from e


def _check_schema(d, where: str) -> None:
    """Refuse what is not a result dict, or one of a newer major schema (or no schema at all)."""
    if not isinstance(d, dict):
        raise ResultFormatError(f"{where}: expected a JSON object, got {type(d).__name__}")
    version = d.get("schema_version")
    if version is None:
        raise ResultFormatError(f"{where}: no schema_version, so this is not a heta_fast result "
                                "(results are written by to_json / to_dict)")
    parts = str(version).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ResultFormatError(f"{where}: schema_version {version!r} is not of the form MAJOR.MINOR")
    major, current = int(parts[0]), int(SCHEMA_VERSION.split(".")[0])
    if major != current:
        newer = "a newer" if major > current else "an older, unsupported"
        raise ResultFormatError(f"{where}: written with schema_version {version} by {newer} heta_fast; this one reads "
                                f"schema {current}.x (up to {SCHEMA_VERSION})"
                                + (": upgrade heta_fast to load it" if major > current else ""))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(d: dict, key: str, where: str, kind, optional: bool = False):
    """``d[key]`` checked to be a ``kind`` (a type, tuple of types, or ``"number"``); None if optional and absent."""
    if key not in d or d[key] is None:
        if optional:
            return None
        raise ResultFormatError(f"{where}: field {key!r} is missing")
    v = d[key]
    ok = _is_number(v) if kind == "number" else isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        raise ResultFormatError(f"{where}: field {key!r} should be {name}, got {type(v).__name__}")
    return v


def _list(d: dict, key: str, where: str, n: int | None, item_ok, item_kind: str, optional: bool = False):
    v = _get(d, key, where, list, optional)
    if v is None:
        return None
    if n is not None and len(v) != n:
        raise ResultFormatError(f"{where}: {key!r} has {len(v)} entries for {n} context tokens")
    bad = next((i for i, x in enumerate(v) if not item_ok(x)), None)
    if bad is not None:
        raise ResultFormatError(f"{where}: {key}[{bad}] should be {item_kind}, got {v[bad]!r}")
    return v


def _attribution_from_dict(d, where: str) -> Attribution:
    _check_schema(d, where)
    tokens = _list(d, "tokens", where, None, lambda x: isinstance(x, str), "a string")
    n = len(tokens)
    ids = _list(d, "token_ids", where, n, lambda x: isinstance(x, int) and not isinstance(x, bool), "a token id")
    # Schema 1.2: a token value not computed (outside the refined units) is null.
    comps = {name: _list(d, name, where, n, lambda x: x is None or _is_number(x), "a number or null",
                         optional=name != "scores")
             for name in COMPONENT_NAMES}
    offsets = _list(d, "offsets", where, n, lambda o: isinstance(o, list) and len(o) == 2
                    and all(isinstance(x, int) for x in o), "a [start, end] pair", optional=True)
    target = _get(d, "target", where, dict)
    tw = f"{where}: target"
    position = _get(target, "position", tw, int)
    if position != n:
        raise ResultFormatError(f"{where}: target position {position} should equal the number of context tokens {n}")
    logprob = _get(target, "logprob", tw, "number", optional=True)
    sink_mass = _get(d, "sink_gate_mass", where, "number", optional=True)
    return Attribution(
        tokens=list(tokens),
        token_ids=list(ids),
        target_position=position,
        target_id=_get(target, "token_id", tw, int),
        target_token=_get(target, "token", tw, str),
        target_logprob=None if logprob is None else float(logprob),
        scores=floats(comps["scores"]),
        M=floats(comps["M"]),
        S=floats(comps["S"]),
        I=floats(comps["I"]),
        offsets=[(int(a), int(b)) for a, b in offsets] if offsets is not None else None,
        text=_get(d, "text", where, str, optional=True),
        options=dict(_get(d, "options", where, dict, optional=True) or {}),
        timings=dict(_get(d, "timings", where, dict, optional=True) or {}),
        model=_get(d, "model", where, str, optional=True),
        sink_gate_mass=None if sink_mass is None else float(sink_mass),
        units=_units_from_dict(d, where),
        coarse_units=_units_from_dict(d, where, "coarse_units"),
    )


def _units_from_dict(d, where: str, key: str = "units") -> list[Unit] | None:
    units = _get(d, key, where, list, optional=True)
    if units is None:
        return None
    try:
        return [Unit.from_dict(u) for u in units]
    except (KeyError, TypeError, ValueError) as e:
        raise ResultFormatError(f"{where}: {key}: each unit needs text, token_range and score ({e})") from None


def _sequence_from_dict(d, where: str) -> AttributionSequence:
    _check_schema(d, where)
    targets = _get(d, "targets", where, list)
    out = AttributionSequence()
    for k, item in enumerate(targets):
        if isinstance(item, dict) and "schema_version" not in item:
            item = {**item, "schema_version": d["schema_version"]}  # the sequence's version covers its items
        out.append(_attribution_from_dict(item, where=f"{where}: targets[{k}]"))
    return out
