"""Every HETA option in one validated dataclass (SPEC.md names in comments)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from .errors import HetaInputError

COMPONENTS = ("M", "S", "I")


@dataclass(frozen=True)
class HetaOptions:
    """Options of one attribution run.

    Attributes:
        beta, gamma: weights of S and I in ``Attr = M * (beta*S + gamma*I)`` (SPEC §4).
        num_probes: Hutchinson probes m per token (SPEC §2).
        seed: seeds the probe generator (and every other random draw).
        rollout: ``"flow"`` (default, target-conditioned) or ``"reference"`` (official per-head chain).
        hessian: ``"exact"`` (all t*m block HVPs) or ``"lowrank"`` (randomized range finder of ``rank``).
        curvature: ``"hessian"`` or ``"gauss_newton"`` (J^T (diag pi - pi pi^T) J, PSD).
        layers: restrict rollout sum and curvature to the last k layers; ``None`` = all (curvature with
            respect to the embedding rows X); ``"auto"`` (default) = the paper's recipe, the last
            :data:`AUTO_LAYERS` layers, or all of them on a model with no more layers than that (README,
            *Default preset*, says why).
        mask: ``"zero"``, ``"mean"`` or ``"token"`` (uses ``mask_token_id``) for the KL term (SPEC §3).
        normalize: ``"sum"`` (default: S and I divided by their sums first) or ``"none"`` (the paper's formula).
        components: which of M, S, I to compute; missing ones are reported as None and the score uses
            what is there (M alone, or the S/I mix with M = 1).
        window, overlap: long-input windowing (SPEC §4); None = one window of the whole context.
        sink_token: ``"auto"`` (default: the tokenizer's <|endoftext|>/BOS, unless the input already starts
            with it or there is no tokenizer), a token id, or ``None`` (off): prepended to every window as an
            attention sink and dropped from M, S and I (:mod:`heta_fast.sinks`).
        engine: ``"fast"`` (batched kernels) or ``"reference"`` (plain float64 loops, the oracle).
        max_memory: bytes the batched passes may use for intermediates (chunk sizes follow from it).
        lowrank_passes: ``hessian="lowrank"``: 2 (default, ``B = QᵀCQ``, 2·rank products) or 1 (single-pass
            range finder, ``B = sym((QᵀY)(QᵀΩ)⁺)``, rank products; SPEC §2).
        units: what is scored (SPEC §6): ``"token"`` (default), ``"sentence"``, ``"paragraph"``, or ``"spans"``
            (set by giving ``spans``). Units other than tokens run over the whole context in one window.
        spans: the caller's units as character spans ``[(start, end), ...]`` of the input text (ordered,
            disjoint, non-empty); text between them becomes units of its own.
        refine: with units, also score the tokens of the ``refine`` best units (S and I at token level on
            those tokens only); None = units only.
    """

    beta: float = 0.5
    gamma: float = 0.5
    num_probes: int = 10
    seed: int = 0
    rollout: Literal["flow", "reference"] = "flow"
    hessian: Literal["exact", "lowrank"] = "exact"
    rank: int = 64
    curvature: Literal["hessian", "gauss_newton"] = "hessian"
    layers: int | Literal["auto"] | None = "auto"
    mask: Literal["zero", "mean", "token"] = "zero"
    mask_token_id: int | None = None
    normalize: Literal["none", "sum"] = "sum"
    components: tuple[str, ...] = COMPONENTS
    window: int | None = None
    overlap: float = 0.5
    sink_token: int | Literal["auto"] | None = "auto"
    engine: Literal["fast", "reference"] = "fast"
    max_memory: int = 2 * 1024**3
    lowrank_passes: int = 2
    units: Literal["token", "sentence", "paragraph", "spans"] = "token"
    spans: tuple[tuple[int, int], ...] | None = None
    refine: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        def choice(name, allowed):
            val = getattr(self, name)
            if val not in allowed:
                raise HetaInputError(f"{name}={val!r} is not one of {', '.join(map(repr, allowed))}")

        choice("rollout", ("flow", "reference"))
        choice("hessian", ("exact", "lowrank"))
        choice("curvature", ("hessian", "gauss_newton"))
        choice("mask", ("zero", "mean", "token"))
        choice("normalize", ("none", "sum"))
        choice("engine", ("fast", "reference"))
        comps = tuple(dict.fromkeys(c.upper() for c in self.components))
        if not comps or any(c not in COMPONENTS for c in comps):
            raise HetaInputError(f"components={self.components!r}: choose one or more of M, S, I")
        object.__setattr__(self, "components", comps)
        if self.num_probes < 1:
            raise HetaInputError(f"num_probes must be >= 1, got {self.num_probes}")
        if self.hessian == "lowrank" and self.rank < 1:
            raise HetaInputError(f"rank must be >= 1 for hessian='lowrank', got {self.rank}")
        lay = self.layers
        if lay is not None and lay != "auto" and (isinstance(lay, bool) or not isinstance(lay, int) or lay < 1):
            raise HetaInputError(f"layers must be None, 'auto' or a positive number of final layers, got {lay!r}")
        if self.mask == "token" and self.mask_token_id is None:
            raise HetaInputError("mask='token' needs mask_token_id (e.g. the tokenizer's pad/unk/eos id)")
        if self.window is not None and self.window < 1:
            raise HetaInputError(f"window must be >= 1 token, got {self.window}")
        if not 0.0 <= self.overlap < 1.0:
            raise HetaInputError(f"overlap must be in [0, 1), got {self.overlap}")
        sink = self.sink_token
        if sink is not None and sink != "auto" and (isinstance(sink, bool) or not isinstance(sink, int) or sink < 0):
            raise HetaInputError(f"sink_token must be None, 'auto' or a token id >= 0, got {sink!r}")
        self._check_units()
        if self.max_memory < 1 << 20:
            raise HetaInputError(f"max_memory={self.max_memory} bytes is too small; give at least 1 MiB")

    def _check_units(self):
        if self.lowrank_passes not in (1, 2) or isinstance(self.lowrank_passes, bool):
            raise HetaInputError(f"lowrank_passes must be 1 or 2, got {self.lowrank_passes!r}")
        if self.units not in UNIT_KINDS:
            raise HetaInputError(f"units={self.units!r} is not one of {', '.join(map(repr, UNIT_KINDS))}")
        if self.spans is not None:
            if self.units not in ("token", "spans"):
                raise HetaInputError(f"give either units={self.units!r} or spans=, not both")
            object.__setattr__(self, "spans", check_spans(self.spans))
            object.__setattr__(self, "units", "spans")
        elif self.units == "spans":
            raise HetaInputError("units='spans' needs spans=[(start, end), ...] (character offsets of the text)")
        ref = self.refine
        if ref is not None:
            if isinstance(ref, bool) or not isinstance(ref, int) or ref < 1:
                raise HetaInputError(f"refine must be None or a number of units >= 1, got {ref!r}")
            if self.units == "token":
                raise HetaInputError("refine= needs units larger than a token: units='sentence', 'paragraph' "
                                     "or spans=")

    def replace(self, **changes) -> HetaOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["components"] = list(self.components)
        d["spans"] = None if self.spans is None else [list(s) for s in self.spans]
        d.pop("extra")
        return d


UNIT_KINDS = ("token", "sentence", "paragraph", "spans")


def check_spans(spans) -> tuple[tuple[int, int], ...]:
    """Character spans as sorted ``(start, end)`` int pairs: non-empty, non-negative, not overlapping.

    Whether they fit the text is checked where the text is known (:func:`heta_fast.units.partition`).
    """
    if isinstance(spans, (str, bytes)) or not hasattr(spans, "__iter__"):
        raise HetaInputError(f"spans must be a list of (start, end) character offsets, got {spans!r}")
    out = []
    for sp in spans:
        if isinstance(sp, (str, bytes)) or not hasattr(sp, "__len__") or len(sp) != 2 or not all(
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


# layers="auto": curvature (and rollout) over the last 6 layers, as in the paper's large-model recipe.
AUTO_LAYERS = 6


def resolve_layers(layers: int | str | None, num_layers: int) -> int | None:
    """The ``layers`` option as run: ``"auto"`` becomes :data:`AUTO_LAYERS`, or None (all layers, curvature
    with respect to X) on a model with no more layers than that; other values are returned as given."""
    if layers == "auto":
        return AUTO_LAYERS if num_layers > AUTO_LAYERS else None
    return layers


# The paper's large-model recipe (SPEC §4): windows of 512 with 50 % overlap, rank 64, last 6 layers.
PRESETS: dict[str, dict] = {
    "default": {},
    # The paper's formula: raw S and I, curvature with respect to the embedding rows, no sink token.
    "paper": {"normalize": "none", "sink_token": None, "layers": None, "beta": 0.5, "gamma": 0.5},
    "paper-large": {"normalize": "none", "sink_token": None, "window": 512, "overlap": 0.5, "hessian": "lowrank",
                    "rank": 64, "layers": 6},
    "fast": {"hessian": "lowrank", "rank": 16, "num_probes": 4},
    # Long inputs on a CPU: the exact KL term costs about W/2 forwards of W tokens per window, so windows
    # of 256 (half those of paper-large) halve its total; curvature on the last 6 layers as in the paper.
    "long": {"window": 256, "overlap": 0.5, "hessian": "lowrank", "rank": 32, "layers": 6},
}


def options_from_preset(preset: str = "default", **overrides) -> HetaOptions:
    if preset not in PRESETS:
        raise HetaInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return HetaOptions(**{**PRESETS[preset], **overrides})


def layers_arg(value: str) -> int | str:
    """Command-line form of ``layers``: a number of final layers, ``auto``, or ``all`` (the option's None;
    :func:`cli_layers` turns it into None after argparse, which cannot tell None from "not given")."""
    if value in ("auto", "all"):
        return value
    try:
        return int(value)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"--layers takes a number of final layers, 'auto' or 'all', got {value!r}") from None


def cli_layers(value: int | str) -> int | str | None:
    """``layers`` from :func:`layers_arg`'s value: ``"all"`` is None."""
    return None if value == "all" else value


def overrides_from_args(args) -> dict:
    """The :class:`HetaOptions` fields given on a parsed command line (flags left out are absent).

    ``--layers all`` becomes None and ``--components M,I`` a tuple; every front end (``heta-fast explain``,
    ``heta-fast batch``) reads its options through this one function.
    """
    names = {f.name for f in dataclasses.fields(HetaOptions)} - {"components", "extra"}
    out = {n: getattr(args, n) for n in sorted(names) if getattr(args, n, None) is not None}
    if "layers" in out:
        out["layers"] = cli_layers(out["layers"])
    components = getattr(args, "components", None)
    if components:
        out["components"] = tuple(c.strip() for c in components.split(",") if c.strip())
    return out


def spans_arg(value: str) -> tuple[tuple[int, int], ...]:
    """Command-line form of ``spans``: ``START:END,START:END,...`` character offsets (argparse ``type=``)."""
    import argparse

    try:
        pairs = [part.split(":") for part in value.split(",") if part.strip()]
        return tuple((int(a), int(b)) for a, b in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--spans takes START:END,START:END,... character offsets, got {value!r}") from None


def sink_token_arg(value: str) -> int | str:
    """Command-line form of ``sink_token``: ``auto`` or a token id (argparse ``type=``)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"--sink-token takes 'auto' or a token id, got {value!r}") from None
