"""Every HETA option, described once (SPEC.md names in comments).

Each field of :class:`HetaOptions` is declared with :func:`option`: its default, the values it takes and its
help text. Everything else is derived from that one description:

- validation (``HetaOptions(...)`` and ``replace`` reject wrong types, non-finite and out-of-range values);
- the command-line flags of ``heta-fast attribute`` and ``heta-fast batch`` (:func:`add_option_flags`,
  read back with :func:`overrides_from_args`);
- the service's request schema (:mod:`heta_fast.service.schema`) and batch-record checks;
- the README's options table (:func:`options_markdown`).

A new option is one new field here; every front end picks it up (``tests/test_options.py`` checks that).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import HetaInputError

COMPONENTS = ("M", "S", "I")
UNIT_KINDS = ("token", "sentence", "paragraph", "spans")


def is_integer(value) -> bool:
    """An integer and not a bool: ``True`` is no position, token id or count (numpy/torch ints are fine)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class OptionSpec:
    """What one option takes, how it is written on a command line, and what it means.

    Attributes:
        name: the :class:`HetaOptions` field.
        default: its default value.
        help: one line (command-line help, README table, service schema description).
        number: ``int`` or ``float`` when the option takes a number, else None.
        minimum, maximum: inclusive bounds of the number; ``below``: exclusive upper bound.
        words: the strings the option takes: its choices, or words beside a number (``"auto"``).
        many: a list of ``words`` (one or more, case-insensitive): ``components``.
        spans: a list of ``(start, end)`` character spans: ``spans``.
        nullable: None is a value of its own (not "unset"); ``none_word`` spells it on a command line.
        metavar: how the command-line flag shows its value.
        affects_result: False for options that only tune the machine (``max_memory``): a resumed batch job
            may change them.
    """

    name: str
    default: Any
    help: str
    number: type | None = None
    minimum: float | None = None
    maximum: float | None = None
    below: float | None = None
    words: tuple[str, ...] = ()
    many: bool = False
    nullable: bool = False
    none_word: str = "none"
    metavar: str | None = None
    affects_result: bool = True
    spans: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag: ``--num-probes``."""
        return "--" + self.name.replace("_", "-")

    # ---------------------------------------------------------------------------- what it takes
    def allowed(self) -> str:
        """The values it takes, in words: ``"an integer >= 1, 'auto' or None"``."""
        if self.many:
            return f"a list of one or more of {', '.join(map(repr, self.words))}"
        if self.spans:
            return "a list of (start, end) character spans" + (" or None" if self.nullable else "")
        parts = []
        if self.number is not None:
            parts.append(("an integer" if self.number is int else "a finite number") + self._range_text())
        parts += [repr(w) for w in self.words]
        if self.nullable:
            parts.append("None")
        if self.number is None and not self.nullable:
            return "one of " + ", ".join(parts)
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]

    def _range_text(self) -> str:
        lo, hi, below = self.minimum, self.maximum, self.below
        fmt = _number_text
        if lo is not None and hi is not None:
            return f" from {fmt(lo)} to {fmt(hi)}"
        if lo is not None and below is not None:
            return f" >= {fmt(lo)} and < {fmt(below)}"
        if lo is not None:
            return f" >= {fmt(lo)}"
        return ""

    def error(self, value) -> HetaInputError:
        return HetaInputError(f"{self.name} must be {self.allowed()}, got {value!r}", field=self.name)

    def check(self, value):
        """``value`` as the option holds it (ints as int, numbers as float, lists as tuples), or an error.

        Raises:
            HetaInputError: naming the option (``.field``) and what it takes.
        """
        if value is None:
            if self.nullable:
                return None
            raise self.error(value)
        if self.spans:
            try:
                return check_spans(value)
            except HetaInputError as e:
                raise HetaInputError(f"{self.name} must be {self.allowed()}: {e}", field=self.name) from None
        if self.many:
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                    not all(isinstance(v, str) for v in value):
                raise self.error(value)
            picked = tuple(dict.fromkeys(v.strip().upper() for v in value))
            if not picked or any(p not in self.words for p in picked):
                raise self.error(value)
            return picked
        if isinstance(value, str):
            if value in self.words:
                return value
            raise self.error(value)
        if self.number is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.error(value)
        if self.number is int:
            if not isinstance(value, numbers.Integral):
                raise self.error(value)
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise self.error(value)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum) \
                or (self.below is not None and value >= self.below):
            raise self.error(value)
        return value

    # ------------------------------------------------------------------------------ command line
    def parse_cli(self, text: str):
        """The option's value from its command-line spelling (argparse ``type=``); None is :data:`CLI_NONE`."""
        import argparse

        if self.many:
            value = [c for c in (p.strip() for p in text.split(",")) if c]
        elif self.spans:
            try:
                value = [tuple(int(x) for x in part.split(":")) for part in text.split(",") if part.strip()]
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be START:END,START:END,... character offsets, got {text!r}") \
                    from None
        elif self.nullable and text == self.none_word:
            return CLI_NONE
        elif text in self.words or self.number is None:
            value = text
        else:
            try:
                value = self.number(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {self.cli_allowed()}, got {text!r}") from None
        try:
            return self.check(value)
        except HetaInputError:
            raise argparse.ArgumentTypeError(f"must be {self.cli_allowed()}, got {text!r}") from None

    def cli_allowed(self) -> str:
        """:meth:`allowed` as a command line spells it (None is the ``none_word``)."""
        text = self.allowed()
        if self.many:
            return text.replace("a list of", "a comma-separated list of")
        if self.spans:
            return "START:END,START:END,... character offsets"
        return text.replace("None", repr(self.none_word)) if self.nullable else text

    def cli_metavar(self) -> str:
        if self.metavar:
            return self.metavar
        if self.number is None and not self.many:
            return "{" + ",".join(self.words) + "}"
        return self.name.upper()


class _CliNone:
    """argparse cannot tell an explicit None from a flag left out, so ``--layers all`` parses to this."""

    def __repr__(self) -> str:
        return "CLI_NONE"


CLI_NONE = _CliNone()


def _number_text(x: float) -> str:
    if x == 2**63 - 1:
        return "2^63 - 1"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_spans(spans) -> tuple[tuple[int, int], ...]:
    """Character spans as sorted ``(start, end)`` int pairs: non-empty, non-negative, not overlapping.

    Whether they fit the text is checked where the text is known (:func:`heta_fast.units.partition`).
    """
    if isinstance(spans, (str, bytes, dict)) or not hasattr(spans, "__iter__"):
        raise HetaInputError(f"spans must be a list of (start, end) character offsets, got {spans!r}")
    out = []
    for sp in spans:
        if isinstance(sp, (str, bytes, dict)) or not hasattr(sp, "__len__") or len(sp) != 2 or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in sp):
            raise HetaInputError(f"each span must be a pair of integer character offsets (start, end), got {sp!r}")
        start, end = sp
        if start < 0 or end <= start:
            raise HetaInputError(f"span ({start}, {end}) is empty or negative: need 0 <= start < end")
        out.append((start, end))
    if not out:
        raise HetaInputError("spans is empty: give at least one (start, end) character span")
    out.sort()
    for (a0, b0), (a1, b1) in zip(out, out[1:], strict=False):
        if a1 < b0:
            raise HetaInputError(f"spans ({a0}, {b0}) and ({a1}, {b1}) overlap; units must not overlap")
    return tuple(out)


def option(default, help: str, **spec) -> Any:
    """A :class:`HetaOptions` field with its :class:`OptionSpec` (the name is filled in from the field)."""
    return field(default=default, metadata={"spec": dict(default=default, help=help, **spec)})


@dataclass(frozen=True)
class HetaOptions:
    """Options of one attribution run (every field is described by its :func:`option` line).

    ``layers="auto"`` (default) is the paper's recipe, the last :data:`AUTO_LAYERS` layers, or all of them on a
    model with no more layers than that (README, *Default preset*, says why). ``components`` missing from a run
    are reported as None and the score uses what is there (M alone, or the S/I mix with M = 1).
    ``sink_token="auto"`` uses the tokenizer's <|endoftext|>/BOS unless the input already starts with it or
    there is no tokenizer (:mod:`heta_fast.sinks`).
    """

    # SPEC §4: Attr = M * (beta*S + gamma*I).
    beta: float = option(0.5, "weight of S in the score", number=float, minimum=0, maximum=1e6)
    gamma: float = option(0.5, "weight of I in the score", number=float, minimum=0, maximum=1e6)
    # SPEC §2: Hutchinson probes m per token.
    num_probes: int = option(10, "Hutchinson probes per token (m)", number=int, minimum=1, metavar="M")
    seed: int = option(0, "seeds the Rademacher probes (drawn in (i, k) order) and the low-rank test matrix",
                       number=int, minimum=0, maximum=2**63 - 1, metavar="SEED")
    rollout: Literal["flow", "reference"] = option(
        "flow", "gate M: attention-value flow, or the official per-head chain 'reference' (needs H_kv = H)",
        words=("flow", "reference"))
    # Low-rank S by default: on answers the models predict it matches exact S's evidence shares at a third of
    # the time (benchmarks/eval/README.md, "Default preset"); preset="exact" keeps SPEC §2's exact S.
    hessian: Literal["exact", "lowrank"] = option(
        "lowrank", "S from a randomized range finder of `rank` HVPs ('lowrank'), or from every block HVP ('exact')",
        words=("exact", "lowrank"))
    rank: int = option(16, "number of range-finder directions for hessian='lowrank'", number=int, minimum=1,
                       metavar="K")
    curvature: Literal["hessian", "gauss_newton"] = option(
        "hessian", "the Hessian, or the PSD Gauss-Newton matrix J^T (diag pi - pi pi^T) J",
        words=("hessian", "gauss_newton"))
    layers: int | Literal["auto"] | None = option(
        "auto", "rollout and curvature over the last K layers; 'auto': the last 6 (every layer of a model with 6 "
        "or fewer); None (command line: all): every layer, curvature with respect to the embedding rows",
        number=int, minimum=1, words=("auto",), nullable=True, none_word="all", metavar="K|auto|all")
    # SPEC §3: the row that replaces a masked token in the KL term.
    mask: Literal["zero", "mean", "token"] = option(
        "zero", "masked row for I: zeros, the mean input row, or the embedding of mask_token_id ('token')",
        words=("zero", "mean", "token"))
    mask_token_id: int | None = option(None, "token whose embedding masks for mask='token'", number=int, minimum=0,
                                       nullable=True, metavar="ID")
    normalize: Literal["none", "sum"] = option(
        "sum", "S and I divided by their sums before mixing, or the paper's raw formula ('none')",
        words=("none", "sum"))
    components: tuple[str, ...] = option(COMPONENTS, "which of M, S, I to compute (the score uses what is there)",
                                         words=COMPONENTS, many=True, metavar="M,S,I")
    # SPEC §4: long inputs in windows of W context tokens overlapping by a fraction rho.
    window: int | None = option(None, "long inputs: windows of W context tokens (None: one window)", number=int,
                                minimum=1, nullable=True, metavar="W")
    overlap: float = option(0.5, "overlap of consecutive windows, as a fraction of W", number=float, minimum=0,
                            below=1, metavar="RHO")
    sink_token: int | Literal["auto"] | None = option(
        "auto", "attention-sink token prepended to every window and dropped from M, S, I: 'auto' (the "
        "tokenizer's <|endoftext|>/BOS), a token id, or None (command line: none)",
        number=int, minimum=0, words=("auto",), nullable=True, metavar="auto|ID|none")
    special_tokens: Literal["sink", "keep"] = option(
        "sink", "special tokens the tokenizer adds in front (a BOS): 'sink' treats them like the sink token (not "
        "positions of the result, in front of every window, left out of M, S, I, mass in sink_gate_mass); 'keep': "
        "visible context tokens", words=("sink", "keep"))
    engine: Literal["fast", "reference"] = option(
        "fast", "batched kernels, or the plain float64 loops of the oracle ('reference')", words=("fast", "reference"))
    # SPEC §2: the single-pass range finder (1) or the two-pass one (2).
    lowrank_passes: int = option(2, "hessian='lowrank': 2 (B = Q^T C Q, 2*rank products) or 1 (single-pass range "
                                 "finder, rank products, less accurate)", number=int, minimum=1, maximum=2,
                                 metavar="{1,2}")
    # SPEC §6: units larger than a token.
    units: Literal["token", "sentence", "paragraph", "spans"] = option(
        "token", "what is scored: tokens, sentences, paragraphs, or 'spans' (set by giving spans); units other than "
        "tokens run over the whole context in one window", words=UNIT_KINDS)
    spans: tuple[tuple[int, int], ...] | None = option(
        None, "the caller's units as character spans of the text (text between them becomes units of its own)",
        spans=True, nullable=True, metavar="S:E,S:E,...")
    refine: int | None = option(None, "with units: also score the tokens of the K best units (S and I at token "
                                "level on those tokens only)", number=int, minimum=1, nullable=True, metavar="K")
    # SPEC §6, levels: coarse units first, then the fine units (units=) inside the best of them only.
    coarse: Literal["none", "auto", "paragraph", "block"] = option(
        "none", "with units: score coarse units first and only the units inside the `expand` best of them: "
        "paragraphs, blocks of whole units (about sqrt(expand x units) blocks, closed at paragraph breaks where "
        "possible; from 131 units at expand=3, blocks of sub-blocks, each level expanding its `expand` best), "
        "'auto' (blocks when the context has at least 16 x expand units, else every unit), or 'none'",
        words=("none", "auto", "paragraph", "block"))
    # 3: on 1,024-token needles with distractors, 1 or 2 missed needles that every unit scored found (the block
    # before the target always ranks high); 3 found them all (benchmarks/eval/README.md, *Levels*).
    expand: int = option(3, "with coarse: how many of the best coarse units (at each coarse level) have their "
                         "units scored",
                         number=int, minimum=1, metavar="K")
    max_memory: int | Literal["auto"] = option(
        "auto", "bytes the batched passes may use for intermediates (sets chunk sizes; results do not change); "
        "'auto': 60 % of the memory free when the call starts (the GPU's free memory on CUDA)", number=int,
        minimum=1 << 20, words=("auto",), metavar="BYTES|auto", affects_result=False)

    def __post_init__(self):
        for spec in OPTION_SPECS:
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
        if self.mask == "token" and self.mask_token_id is None:
            raise HetaInputError("mask='token' needs mask_token_id (e.g. the tokenizer's pad/unk/eos id)", field="mask")
        self._check_units()

    def _check_units(self) -> None:
        """spans= sets units='spans'; refine= needs units larger than a token; units take no windows."""
        if self.spans is not None:
            if self.units not in ("token", "spans"):
                raise HetaInputError(f"give either units={self.units!r} or spans=, not both", field="spans")
            object.__setattr__(self, "units", "spans")
        elif self.units == "spans":
            raise HetaInputError("units='spans' needs spans=[(start, end), ...] (character offsets of the text)",
                                 field="units")
        if self.units != "token" and self.window is not None:
            # Not ignored: a unit's KL masks it over the whole context, which windows would cut (SPEC §6).
            raise HetaInputError(
                f"window={self.window} does not apply with units={self.units!r}: units are scored over the whole "
                "context in one window; leave window out (window=None, command line: --window none), or keep "
                "units='token' for windows (the 'document' preset is sentence units, the 'long' preset token windows)",
                field="window")
        # "auto" is a no-op on tokens, so a preset with coarse="auto" still runs with units="token".
        if (self.coarse in ("paragraph", "block") and self.units == "token") or (self.coarse == "paragraph" == self.units):
            raise HetaInputError(f"coarse={self.coarse!r} needs units finer than the coarse ones: units='sentence', "
                                 f"'paragraph' (with coarse='block' or 'auto') or spans= (got units={self.units!r})",
                                 field="coarse")
        if self.refine is not None and self.units == "token":
            raise HetaInputError("refine needs units larger than a token: units='sentence', 'paragraph' or spans=",
                                 field="refine")

    def replace(self, **changes) -> HetaOptions:
        """These options with ``changes`` (validated; an unknown name is a :class:`HetaInputError`)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["components"] = list(self.components)
        d["spans"] = None if self.spans is None else [list(sp) for sp in self.spans]
        return d


OPTION_SPECS: tuple[OptionSpec, ...] = tuple(
    OptionSpec(name=f.name, **f.metadata["spec"]) for f in dataclasses.fields(HetaOptions)
)
OPTION_NAMES: tuple[str, ...] = tuple(s.name for s in OPTION_SPECS)
SPECS_BY_NAME: dict[str, OptionSpec] = {s.name: s for s in OPTION_SPECS}


def _check_names(changes: dict) -> None:
    unknown = [k for k in changes if k not in SPECS_BY_NAME]
    if unknown:
        raise HetaInputError(f"unknown option {unknown[0]!r}; valid options: {', '.join(OPTION_NAMES)}",
                             field=unknown[0])


# layers="auto": curvature (and rollout) over the last 6 layers, as in the paper's large-model recipe.
AUTO_LAYERS = 6


def resolve_layers(layers: int | str | None, num_layers: int) -> int | None:
    """The ``layers`` option as run: ``"auto"`` becomes :data:`AUTO_LAYERS`, or None (all layers, curvature
    with respect to X) on a model with no more layers than that; other values are returned as given.

    Raises:
        HetaInputError: (field ``layers``) more layers than the model has, before any work is done.
    """
    if layers == "auto":
        return AUTO_LAYERS if num_layers > AUTO_LAYERS else None
    if layers is not None and layers > num_layers:
        raise HetaInputError(f"layers={layers} but the model has only {num_layers} layers", field="layers")
    return layers


PRESETS: dict[str, dict] = {
    "default": {},
    # SPEC §2's exact S (every block HVP, m = 10) with the default's sink, normalisation and layers: the default
    # until 2026-12-01. Its cost grows with t² (t·m HVPs over causal suffixes); low-rank S costs 2·rank HVPs.
    "exact": {"hessian": "exact"},
    # The paper's formula: raw S and I, exact S with respect to the embedding rows, no sink token.
    "paper": {"normalize": "none", "sink_token": None, "layers": None, "beta": 0.5, "gamma": 0.5,
              "hessian": "exact"},
    # The paper's large-model recipe (SPEC §4): windows of 512 with 50 % overlap, rank 64, the last 6 layers
    # ("auto": the same 6, or every layer of a model with no more, where a fixed 6 was an error).
    "paper-large": {"normalize": "none", "sink_token": None, "window": 512, "overlap": 0.5, "hessian": "lowrank",
                    "rank": 64, "layers": "auto"},
    # The default with 4 probes per token instead of 10 (reading the probes from the low-rank factors is cheap, so
    # this saves little since low-rank S became the default; kept for scripts that name it).
    "fast": {"hessian": "lowrank", "rank": 16, "num_probes": 4},
    # Long inputs on a CPU: the exact KL term costs about W/2 forwards of W tokens per window, so windows
    # of 256 (half those of paper-large) halve its total; curvature on the last 6 layers as in the paper
    # ("auto": all layers on a model with no more than 6).
    "long": {"window": 256, "overlap": 0.5, "hessian": "lowrank", "rank": 32, "layers": "auto"},
    # Long documents, "which sentence?": sentence units over the whole context (no windows), exact unit KL,
    # low-rank S whose cost does not grow with the number of units. At unit level the single-pass range finder
    # ranks like two passes (ρ 0.986 vs 0.975 against exact S, 27 sentences; benchmarks/RESULTS.md) at half the
    # products, and rank 8 like rank 16 (ρ against exact unit S, 3 range-finder seeds, 53 sentences: 0.962 / 0.962;
    # 33 sentences: 0.979 / 0.957; differentiating fewer layers loses the ranking, ρ 0.83–0.86; benchmarks/RESULTS.md,
    # *A cheaper unit S*) at 57 % of the time. Rank 4 ranks as well on average (ρ 0.967) at 61 % of rank 8's time,
    # but where a needle and its distractor are close it puts the distractor first for one range-finder seed in
    # three (rank 8: none; benchmarks/eval/README.md, *Levels*), so the preset keeps rank 8. Curvature over the
    # last 6 layers (layers="auto", the default). Levels (coarse="auto"): long contexts score blocks first and the
    # sentences of the best 3 only; from 131 sentences (about 3,000 tokens of prose) blocks of sub-blocks, the best 3
    # expanded at each level.
    "document": {"units": "sentence", "hessian": "lowrank", "rank": 8, "lowrank_passes": 1, "coarse": "auto",
                 "expand": 3},
}


def options_from_preset(preset: str = "default", **overrides) -> HetaOptions:
    if preset not in PRESETS:
        raise HetaInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", field="preset")
    _check_names(overrides)
    return HetaOptions(**{**PRESETS[preset], **overrides})


# ------------------------------------------------------------------------------------ command line
def add_option_flags(parser, names: tuple[str, ...] | None = None, defaults: dict | None = None) -> None:
    """One flag per option on an argparse parser (``dest`` = the option; left out = None = not given).

    ``names`` picks a subset (a front end that varies only some options); ``defaults`` gives flags a default
    of the front end's own instead of None.
    """
    defaults = defaults or {}
    group = parser.add_argument_group("HETA options" + ("" if defaults else " (default: the preset's value)"))
    for spec in OPTION_SPECS:
        if names is not None and spec.name not in names:
            continue
        shown = f" (default: {defaults[spec.name]})" if spec.name in defaults else ""
        # argparse formats help with %: a literal one ("60 % of the memory") must be doubled.
        help_text = f"{spec.help}; {spec.cli_allowed()}{shown}".replace("%", "%%")
        group.add_argument(spec.flag, dest=spec.name, type=spec.parse_cli, metavar=spec.cli_metavar(),
                           default=defaults.get(spec.name), help=help_text)


def overrides_from_args(args) -> dict:
    """The :class:`HetaOptions` fields given on a parsed command line (flags left out are absent).

    Every front end (``heta-fast attribute``, ``heta-fast batch``) reads its options through this one
    function; ``--layers all`` and the other ``none`` words become None.
    """
    out = {}
    for spec in OPTION_SPECS:
        value = getattr(args, spec.name, None)
        if value is not None:
            out[spec.name] = None if value is CLI_NONE else value
    return out


# ------------------------------------------------------------------------------------------ docs
def _doc_value(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 30) == 0:
        return f"{value >> 30} GiB"
    return f"{value:g}" if isinstance(value, float) else str(value)


def options_markdown() -> str:
    """The README's options table, one row per option (``tests/test_options.py`` keeps the README equal)."""
    rows = ["| option | default | values | meaning | command line |", "|---|---|---|---|---|"]
    for s in OPTION_SPECS:
        cells = [f"`{s.name}`", _doc_value(s.default), s.allowed().replace("'", '"'), s.help,
                 f"`{s.flag} {s.cli_metavar()}`"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a bare | would end the cell
    return "\n".join(rows) + "\n"
