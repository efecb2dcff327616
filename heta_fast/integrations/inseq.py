"""Inseq: ``import heta_fast.integrations.inseq`` registers HETA as the Inseq attribution method ``"heta"``.

    import inseq
    import heta_fast.integrations.inseq  # noqa: F401  (registers "heta")

    model = inseq.load_model(hf_model, "heta", tokenizer=hf_tokenizer, num_probes=4)   # load-time defaults
    out = model.attribute("The capital of France is", "The capital of France is Paris", seed=1)  # per call
    out.show(); out.save("heta.json"); out.sequence_attributions[0].aggregate("subwords").show()

Every generation step is one HETA run: the step's prefix is the context, the step's token the target.
Options are any :class:`heta_fast.HetaOptions` field (and ``preset``), given to ``load_model`` (defaults for
the model) or to ``attribute`` (that call). The score ``M * (beta*S + gamma*I)`` is the attribution
(``target_attributions``, one value per prefix token, ``[prefix, generated]`` per sequence like every
decoder-only Inseq method); M, S and I come along as sequence scores of the same shape, ``heta_M``, ``heta_S``
and ``heta_I``, and with a sink token its gate mass is the step score ``heta_sink_gate_mass``.
``component(seq, "M")`` gives a sequence whose attributions are M, for ``show`` and ``aggregate``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch

from ..errors import HetaInputError, UnsupportedModelError
from ..options import HetaOptions, options_from_preset

try:
    from inseq.attr.feat import FeatureAttribution
    from inseq.attr.step_functions import get_step_function
    from inseq.data import CoarseFeatureAttributionStepOutput, FeatureAttributionSequenceOutput
except ImportError as e:  # inseq is an optional extra
    raise ImportError(f"heta_fast.integrations.inseq needs Inseq, which is not installed ({e}). Install it with "
                      "pip install 'heta_fast[inseq]' (on Linux inseq's metadata also pulls CUDA 11 wheels); with a "
                      "CPU torch: pip install --no-deps inseq, plus the packages in requirements/integrations.txt"
                      ) from e

METHOD_NAME = "heta"
#: Keyword arguments of ``attribute`` / ``load_model`` that go to HETA.
OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(HetaOptions) if f.name != "extra") | {"preset"}
COMPONENT_SCORES = {"M": "heta_M", "S": "heta_S", "I": "heta_I"}
SINK_STEP_SCORE = "heta_sink_gate_mass"


def _split_options(options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise HetaInputError(f"unknown HETA option(s) {', '.join(unknown)}; options are {', '.join(sorted(OPTION_NAMES))}")
    options = dict(options)
    preset = options.pop("preset", None)
    if "components" in options and isinstance(options["components"], list):
        options["components"] = tuple(options["components"])
    return preset, options


class HetaAttribution(FeatureAttribution):
    """HETA (gate x (beta * Hessian sensitivity + gamma * KL impact)) as an Inseq feature attribution method.

    Args:
        attribution_model: the Inseq model (decoder-only; built by ``inseq.load_model(model, "heta", ...)``).
        **options: default HETA options for this model (any :class:`heta_fast.HetaOptions` field, or
            ``preset``); ``attribute(..., **options)`` overrides them per call.
    """

    method_name = METHOD_NAME

    def __init__(self, attribution_model, **options):
        super().__init__(attribution_model, hook_to_model=False)
        if attribution_model.is_encoder_decoder:
            raise UnsupportedModelError("HETA explains decoder-only (causal) language models; "
                                        f"{type(attribution_model.model).__name__} is an encoder-decoder")
        # HETA reads token ids and runs its own forwards; Inseq's step-score forward may use ids too.
        self.attribute_batch_ids = True
        self.forward_batch_embeds = False
        self.preset, self.defaults = _split_options(options)
        # Checked now, so a bad option fails at load_model rather than at the first step.
        self._options = options_from_preset(self.preset or "default", **self.defaults)
        self._attributor = None
        self.hook()

    def unhook(self, **kwargs) -> None:
        self._attributor = None
        super().unhook(**kwargs)

    # ------------------------------------------------------------------------------------- inseq hooks
    @property
    def attributor(self):
        """The :class:`heta_fast.Attributor` over the Inseq model's own model and tokenizer (built on first use)."""
        if self._attributor is None:
            from ..api import Attributor

            am = self.attribution_model
            self._attributor = Attributor(am.model, am.tokenizer, options=self._options,
                                          name=am.model_name or type(am.model).__name__)
        return self._attributor

    def get_attribution_args(self, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``attribute``'s keyword arguments into HETA options and the rest (for Inseq's other consumers)."""
        ours = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
        return ours, {k: v for k, v in kwargs.items() if k not in ours}

    def _run_compatibility_checks(self, attributed_fn) -> None:
        default = get_step_function(self.attribution_model.default_attributed_fn_id)
        if attributed_fn is not default:
            name = getattr(attributed_fn, "__name__", attributed_fn)
            raise HetaInputError(f"HETA explains the target token's own log-probability; attributed_fn={name!r} "
                                 "cannot be used with method 'heta' (leave attributed_fn unset)")
        super()._run_compatibility_checks(attributed_fn)

    def attribute(self, batch, *args, output_step_attributions: bool = False, **kwargs):
        """Inseq's attribution loop, then M, S and I laid out like the score.

        Inseq (0.7) keeps only the first rows of a decoder-only method's per-step sequence scores (as many
        as there are generated tokens), so they are rebuilt here from the step outputs with the same
        function Inseq uses for the attributions themselves.
        """
        out = super().attribute(batch, *args, output_step_attributions=True, **kwargs)
        steps = out.step_attributions
        names = list(steps[0].sequence_scores) if steps else []
        for name in names:
            as_attributions = []
            for step in steps:
                moved = copy.copy(step)
                moved.target_attributions, moved.sequence_scores, moved.step_scores = step.sequence_scores[name], {}, {}
                as_attributions.append(moved)
            rebuilt = FeatureAttributionSequenceOutput.from_step_attributions(
                attributions=as_attributions, tokenized_target_sentences=self.attribution_model.get_token_with_ids(batch),
                pad_token=self.attribution_model.pad_token, attr_pos_end=out.info["attr_pos_end"])
            for seq, fixed in zip(out.sequence_attributions, rebuilt, strict=True):
                seq.sequence_scores[name] = fixed.target_attributions
        if not output_step_attributions:
            out.step_attributions = None
            out.info["output_step_attributions"] = False
        return out

    def attribute_step(self, attribute_fn_main_args: dict[str, Any],
                       attribution_args: dict[str, Any] | None = None) -> CoarseFeatureAttributionStepOutput:
        """One generation step: HETA of each sequence's next token over its (unpadded) prefix.

        Args:
            attribute_fn_main_args: Inseq's step arguments; ``additional_forward_args`` holds the prefix ids
                ``[batch, prefix]``, the target ids ``[batch, 1]`` and the attention mask ``[batch, prefix]``
                (Inseq pads decoder-only batches on the left).
            attribution_args: HETA options for this call (from ``attribute(..., **options)``).

        Returns:
            ``target_attributions`` ``[batch, prefix]`` = the HETA score (0 at padding), ``sequence_scores``
            ``heta_M``/``heta_S``/``heta_I`` of the same shape, and ``step_scores[heta_sink_gate_mass]``
            ``[batch]`` when a sink token was used.
        """
        ids, targets, _, mask = attribute_fn_main_args["additional_forward_args"][:4]
        preset, overrides = _split_options(attribution_args or {})
        results = [self.explain(ids[b][mask[b].bool()], int(targets.reshape(-1)[b]), preset, overrides)
                   for b in range(ids.shape[0])]
        return step_output_from_results(results, mask)

    def explain(self, prefix_ids: torch.Tensor, target_id: int, preset: str | None = None,
                overrides: dict[str, Any] | None = None):
        """HETA of ``target_id`` following ``prefix_ids`` (1-D): one :class:`heta_fast.Attribution`.

        Options: the load-time ones, then ``overrides``; a ``preset`` here replaces the load-time preset (the
        load-time options still apply on top of it).
        """
        ids = torch.cat([prefix_ids.reshape(-1).cpu(), torch.tensor([target_id])])
        overrides = overrides or {}
        if preset is not None:
            overrides = {**self.defaults, **overrides}
        return self.attributor.attribute(ids, target=-1, preset=preset, **overrides)


def component(seq_attr, name: str):
    """One sequence's M, S or I (or ``"scores"``) as its attributions, so Inseq's ``show``, ``aggregate``
    (spans, subwords, slices, pairs) and ``get_scores_dicts`` treat that component as they treat the score.

    Args:
        seq_attr: one of ``out.sequence_attributions`` from a ``"heta"`` model.
        name: ``"M"``, ``"S"``, ``"I"`` or ``"scores"``.
    """
    if name == "scores":
        return seq_attr
    if name not in COMPONENT_SCORES:
        raise HetaInputError(f"component {name!r}: choose one of scores, {', '.join(COMPONENT_SCORES)}")
    key = COMPONENT_SCORES[name]
    if not seq_attr.sequence_scores or key not in seq_attr.sequence_scores:
        raise HetaInputError(f"this attribution has no {key} (was {name} among the computed components?)")
    return dataclasses.replace(seq_attr, target_attributions=seq_attr.sequence_scores[key], sequence_scores={})


def step_output_from_results(results, mask: torch.Tensor) -> CoarseFeatureAttributionStepOutput:
    """Inseq's step output for one HETA result per batch row, placed at the row's unpadded positions."""
    batch, width = mask.shape
    where = mask.bool().cpu()

    def place(name: str) -> torch.Tensor:
        out = torch.zeros(batch, width, dtype=torch.float32)
        for b, r in enumerate(results):
            vals = torch.tensor(getattr(r, name), dtype=torch.float32)
            cols = where[b].nonzero().reshape(-1)
            # Special tokens in front (a BOS) are the sink by default: not in the result, so they keep 0 and the
            # result fills the row's last unpadded positions.
            out[b, cols[cols.numel() - vals.numel():]] = vals
        return out

    present = [c for c in COMPONENT_SCORES if all(getattr(r, c) is not None for r in results)]
    step_scores = {}
    if any(r.sink_gate_mass is not None for r in results):
        step_scores[SINK_STEP_SCORE] = torch.tensor(
            [math.nan if r.sink_gate_mass is None else r.sink_gate_mass for r in results], dtype=torch.float32)
    return CoarseFeatureAttributionStepOutput(
        target_attributions=place("scores"),
        sequence_scores={COMPONENT_SCORES[c]: place(c) for c in present},
        step_scores=step_scores,
    )


__all__ = ["HetaAttribution", "METHOD_NAME", "OPTION_NAMES", "component", "step_output_from_results"]
