"""The public API: :class:`Attributor` turns text or ids plus a target into :class:`Attribution` results.

This module knows about text: encoding, target positions, continuations, greedy generation, token strings
and building results. The numbers come from :class:`heta_fast.engine.Engine`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .cpu_allocator import tune_malloc_for_tensors
from .engine import Engine, Explanation
from .errors import HetaInputError, NumericalError
from .hf import ModelAdapter
from .options import HetaOptions, is_integer, options_from_preset, resolve_layers
from .plan import CostPlan, calibrate, make_plan, resolve_max_memory
from .progress import StopCheck, check_stop
from .result import Attribution, AttributionSequence, floats
from .sharding import Shard
from .sinks import leading_special_count, resolve_sink
from .tokenizers import check_text
from .units import UnitSpan, coarse_levels, context_units, unit_ranges, unit_results

# With progress bars on, a run the plan puts above this many seconds prints the plan first.
LONG_RUN_SECONDS = 30


@dataclass
class _Encoded:
    ids: Tensor  # [n] all tokens (prompt + continuation)
    offsets: list[tuple[int, int]] | None
    text: str | None
    prompt_len: int  # number of prompt tokens
    specials: list[int] = field(default_factory=list)  # special tokens the tokenizer added in front, split off


class Attributor:
    """HETA attributions for one causal LM.

    Args:
        model: a HuggingFace causal LM (any ``AutoModelForCausalLM``), already loaded.
        tokenizer: its tokenizer; optional when you pass token ids.
        options: default :class:`HetaOptions` (``attribute`` may override any of them).
        progress: show progress bars for long work.
        shard: split each attribution's work over the ranks of a process group (:class:`heta_fast.sharding.Shard`,
            e.g. ``Shard.from_process_group()`` under ``torchrun``); every rank makes the same calls and gets the
            whole result, for documents that outgrow one machine's time.

    The model is not changed: heta_fast runs on a working view of it that shares its weights
    (:func:`heta_fast.hf.adapter.working_view`: eval mode, frozen parameters and heta_fast's recording
    attention on the view only), so its outputs, ``output_attentions``, train/eval mode and ``requires_grad``
    flags are the same before, during and after an attribution, for this thread and any other. One
    Attributor runs one call at a time (other threads wait); several Attributors may share a model.
    """

    def __init__(self, model, tokenizer=None, *, options: HetaOptions | None = None, progress: bool = False,
                 name: str | None = None, shard: Shard | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or HetaOptions()
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.adapter = ModelAdapter(model)
        self.engine = Engine(self.adapter, progress=progress, shard=shard)
        if self.adapter.device.type == "cpu":
            tune_malloc_for_tensors()

    @property
    def progress(self) -> bool:
        """Whether long work shows progress bars."""
        return self.engine.progress

    @progress.setter
    def progress(self, enabled: bool) -> None:
        self.engine.progress = enabled

    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", *, dtype=torch.float32, device: str = "cpu",
                        preset: str = "default", progress: bool = False, shard: Shard | None = None,
                        **options) -> Attributor:
        """Load ``"default"`` (SmolLM2-135M-Instruct), ``"gemma3-270m"`` (both from GGUF wheels, offline) or a
        local HF folder."""
        from .models import load_model, model_display_name

        model, tok = load_model(name_or_path, dtype=dtype, device=device)
        name = model_display_name(name_or_path)
        return cls(model, tok, options=options_from_preset(preset, **options), progress=progress, name=name,
                   shard=shard)

    # ------------------------------------------------------------------------------------ encoding
    def _encode(self, text_or_ids, special_tokens: str = "keep") -> _Encoded:
        """Token ids (and offsets) of the input; with ``special_tokens="sink"`` the special tokens the
        tokenizer added in front (a BOS) are split off into ``specials`` (they become the lead)."""
        if isinstance(text_or_ids, str):
            if not text_or_ids.strip():
                raise HetaInputError("empty text: there is nothing to explain")
            if self.tokenizer is None:
                raise HetaInputError("text input needs a tokenizer; pass token ids or give Attributor a tokenizer")
            check_text(text_or_ids)  # a lone surrogate would make the tokenizer raise a bare TypeError
            enc = self.tokenizer(text_or_ids, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            offsets = [tuple(o) for o in enc["offset_mapping"]]
            text = text_or_ids
        else:
            ids = torch.as_tensor(text_or_ids).reshape(-1).tolist() if not isinstance(text_or_ids, list) \
                else list(text_or_ids)
            bad = next((i for i in ids if not is_integer(i)), None)
            if bad is not None:  # a float or bool would otherwise be truncated to some token silently
                raise HetaInputError(f"token ids must be integers, got {bad!r} ({type(bad).__name__})")
            offsets, text = None, None
        if not ids:
            raise HetaInputError("empty input: there are no tokens to explain")
        t = torch.tensor(ids, dtype=torch.long, device=self.adapter.device)
        self.adapter.check_ids(t)
        k = leading_special_count(ids, offsets, self.tokenizer) if special_tokens == "sink" else 0
        if k == len(ids):
            raise HetaInputError("the input holds only special tokens: there is no text to explain")
        return _Encoded(ids=t[k:], offsets=None if offsets is None else offsets[k:], text=text,
                        prompt_len=len(ids) - k, specials=ids[:k])

    def tokenize(self, text_or_ids, *, special_tokens: str | None = None) -> list[tuple[int, int, str]]:
        """``(position, id, token)`` of every input token, numbered as :meth:`attribute` numbers them: special
        tokens the tokenizer adds in front (a BOS) are the sink under ``special_tokens="sink"`` (the
        Attributor's default option), not positions."""
        enc = self._encode(text_or_ids, special_tokens or self.options.special_tokens)
        return [(i, int(enc.ids[i]), self._token_text(enc, i)) for i in range(enc.ids.numel())]

    def _with_continuation(self, prompt: _Encoded, continuation: str) -> _Encoded:
        """The encoded prompt followed by the tokens of a continuation string (appended, not re-tokenised)."""
        if self.tokenizer is None:
            raise HetaInputError("a continuation string needs a tokenizer")
        if not continuation:
            raise HetaInputError("empty continuation: there is no target to explain")
        cenc = self.tokenizer(continuation, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.cat([prompt.ids, prompt.ids.new_tensor(list(cenc["input_ids"]))])
        self.adapter.check_ids(ids)
        offsets, text = prompt.offsets, prompt.text
        if offsets is not None:
            base = len(text)
            offsets = offsets + [(s + base, e + base) for s, e in cenc["offset_mapping"]]
            text = text + continuation
        return _Encoded(ids=ids, offsets=offsets, text=text, prompt_len=prompt.prompt_len, specials=prompt.specials)

    def _token_text(self, enc: _Encoded, i: int) -> str:
        if enc.offsets is not None and enc.text is not None:
            s, e = enc.offsets[i]
            if e > s:
                return enc.text[s:e]
        tid = int(enc.ids[i])
        if self.tokenizer is not None:
            return self.tokenizer.decode([tid])
        return f"<{tid}>"

    def _generate(self, ids: Tensor, n_new: int, sink: int | None = None, lead: list[int] | None = None,
                  should_stop: StopCheck | None = None) -> list[int]:
        """Greedy continuation of ``ids`` (after the lead: the sink token and special tokens, if any) by ``n_new``
        tokens."""
        new: list[int] = []
        lead = list(lead or []) if sink is None else [sink, *(lead or [])]
        seq = torch.cat([ids.new_tensor(lead), ids])
        with torch.no_grad(), self.adapter.attached():
            for _ in range(n_new):
                check_stop(should_stop)
                logits = self.adapter.last_logits(self.adapter.embed(seq))
                if not torch.isfinite(logits).all():
                    raise NumericalError("the model produced non-finite logits (NaN/Inf); check its weights")
                nxt = int(logits.argmax())
                new.append(nxt)
                seq = torch.cat([seq, seq.new_tensor([nxt])])
        return new

    # --------------------------------------------------------------------------------- attribution
    def attribute(self, text_or_ids, target: int | str | None = None, *, generate: int | None = None,
                  probes: Tensor | None = None, preset: str | None = None, should_stop: StopCheck | None = None,
                  **overrides):
        """Explain one target token (or each token of a continuation).

        Args:
            text_or_ids: the input text, or a 1-D sequence of token ids (no tokenizer needed).
            target: None = the last input token; an int = that position (negative counts from the end);
                a string = a continuation appended to the input and explained token by token
                (teacher-forced).
            generate: greedily generate this many tokens after the input and explain each one.
            probes: Rademacher probes ``[t, m, d]`` to use instead of seeded ones (single target only; with a
                sink token the sink's own row is zero and ``t`` counts the real context tokens only).
            preset: start from a named preset (``"paper"``, ``"paper-large"``, ``"fast"``) instead of the
                Attributor's options.
            should_stop: called between chunks of work (HVP batches, masked-KL chunks, windows, targets,
                generated tokens); when it returns True the call raises :class:`~heta_fast.errors.HetaCancelled`
                (a server uses it for time limits and disconnected clients).
            **overrides: any :class:`HetaOptions` field (beta, gamma, num_probes, seed, rollout, hessian,
                rank, curvature, layers, mask, mask_token_id, normalize, components, window, overlap,
                sink_token, special_tokens, engine, max_memory, lowrank_passes, units, spans, refine).

        Returns:
            :class:`Attribution` for one target, :class:`AttributionSequence` for a continuation.
        """
        opts = options_from_preset(preset, **overrides) if preset else self.options.replace(**overrides)
        check_target(target)
        if generate is not None and not is_integer(generate):
            raise HetaInputError(f"generate must be a positive integer, got {generate!r} ({type(generate).__name__})")
        if generate is not None and target is not None:
            raise HetaInputError("give either target= or generate=, not both")
        with self.adapter.attached():  # one call at a time on this Attributor; the model itself is not touched
            return self._attribute(text_or_ids, target, generate, probes, opts, should_stop)

    def _attribute(self, text_or_ids, target, generate, probes, opts: HetaOptions, should_stop: StopCheck | None):
        base = self._encode(text_or_ids, opts.special_tokens)
        lead = self._lead(base, opts)
        opts = self._resolved(opts, lead)
        if generate is not None:
            if generate < 1:
                raise HetaInputError(f"generate must be >= 1, got {generate}")
            enc = base
            # Generated after the same lead the explanation runs with, so the targets are the model's own.
            new_ids = self._generate(enc.ids, generate, lead=lead, should_stop=should_stop)
            cont = self.tokenizer.decode(new_ids) if self.tokenizer is not None else None
            if cont is not None and enc.text is not None:
                retok = self.tokenizer(cont, add_special_tokens=False)["input_ids"]
                if list(retok) == new_ids:
                    enc = self._with_continuation(base, cont)
                else:  # the decoded text would re-tokenise differently: keep the generated ids exactly
                    enc = _Encoded(ids=torch.cat([enc.ids, enc.ids.new_tensor(new_ids)]), offsets=None,
                                   text=None, prompt_len=enc.prompt_len)
            else:
                enc = _Encoded(ids=torch.cat([enc.ids, enc.ids.new_tensor(new_ids)]), offsets=None, text=None,
                               prompt_len=enc.prompt_len)
            positions = list(range(enc.prompt_len, enc.ids.numel()))
        elif isinstance(target, str):
            enc = self._with_continuation(base, target)
            positions = list(range(enc.prompt_len, enc.ids.numel()))
        else:
            enc = base
            positions = [target_position(enc.ids.numel(), target)]
        if probes is not None and len(positions) != 1:
            raise HetaInputError("probes= can only be given for a single target")
        units, coarse = self._units_and_levels(opts, enc, positions)
        if self.progress:  # a long run says what it will do before it starts
            plan = make_plan(self.adapter, opts, positions, lead=len(lead), prompt_tokens=enc.prompt_len,
                             units=None if units is None else [unit_ranges(u) for u in units], coarse=coarse,
                             calibration=calibrate(self.adapter, self.name))
            if (plan.seconds or 0) > LONG_RUN_SECONDS:
                print(plan.summary(), file=sys.stderr)
        explained = self.engine.explain(enc.ids, positions, opts, probes=probes, lead=enc.ids.new_tensor(lead),
                                        units=None if units is None else [unit_ranges(u) for u in units],
                                        coarse=coarse, should_stop=should_stop)
        results = AttributionSequence(self._build(enc, t, opts, ex) for t, ex in zip(positions, explained, strict=True))
        if units is not None:
            kind = "paragraph" if opts.coarse == "paragraph" else "block"
            for res, spans, c, ex in zip(results, units, coarse, explained, strict=True):
                res.units, res.coarse_units = unit_results(spans, ex.units, res.tokens, enc.text, c, kind)
        return results[0] if len(positions) == 1 and not isinstance(target, str) and generate is None else results

    def plan(self, text_or_ids, target: int | str | None = None, *, generate: int | None = None,
             preset: str | None = None, seconds: bool = True, **overrides) -> CostPlan:
        """What ``attribute`` with the same arguments would do, without running it: windows or levels, units,
        token passes and peak memory per stage, and (``seconds=True``) seconds on this machine from a one-time
        calibration (:func:`heta_fast.plan.calibrate`, a few seconds the first time). Work that depends on
        results (level 2, ``refine``) is counted as its upper bound. ``plan.fits`` is False, with
        ``plan.problem`` naming the option to change, when a stage would not fit ``max_memory``.

        Raises:
            HetaInputError: as :meth:`attribute` would (empty text, target out of range, bad options).
        """
        opts = options_from_preset(preset, **overrides) if preset else self.options.replace(**overrides)
        check_target(target)
        if generate is not None and (not is_integer(generate) or generate < 1):
            raise HetaInputError(f"generate must be a positive integer, got {generate!r}")
        base = self._encode(text_or_ids, opts.special_tokens)
        lead = self._lead(base, opts)
        opts = self._resolved(opts, lead)
        units = None
        if generate is not None:  # the generated text is not known yet: its tokens count as units of one token
            positions = list(range(base.prompt_len, base.prompt_len + generate))
            if opts.units != "token":
                prompt = unit_ranges(context_units(opts, base.text, base.offsets, base.prompt_len))
                units = [prompt + [(i, i + 1) for i in range(base.prompt_len, t)] for t in positions]
            coarse = None
        else:
            enc = self._with_continuation(base, target) if isinstance(target, str) else base
            positions = (list(range(enc.prompt_len, enc.ids.numel())) if isinstance(target, str)
                         else [target_position(enc.ids.numel(), target)])
            spans, coarse = self._units_and_levels(opts, enc, positions)
            units = None if spans is None else [unit_ranges(u) for u in spans]
        cal = calibrate(self.adapter, self.name) if seconds else None
        return make_plan(self.adapter, opts, positions, lead=len(lead), prompt_tokens=base.prompt_len,
                         generate=generate or 0, units=units, coarse=coarse, calibration=cal)

    @staticmethod
    def _units_and_levels(opts: HetaOptions, enc: _Encoded, positions: list[int]):
        """Each target's units (SPEC §6) and, with levels, their coarse levels; ``(None, None)`` for tokens."""
        if opts.units == "token":
            return None, None
        units = [context_units(opts, enc.text, enc.offsets, t) for t in positions]
        return units, [coarse_levels(opts.coarse, u, enc.text, opts.expand) for u in units]

    def _resolved(self, opts: HetaOptions, lead: list[int]) -> HetaOptions:
        """The options as run and recorded: the sink (the lead's first token), the layers and the memory budget
        actually used, not "auto"."""
        return opts.replace(sink_token=lead[0] if lead else None,
                            layers=resolve_layers(opts.layers, self.adapter.num_layers),
                            max_memory=resolve_max_memory(opts.max_memory, self.adapter.device))

    def units(self, text_or_ids, target: int | str | None = None, *, preset: str | None = None,
              **overrides) -> list[UnitSpan]:
        """The units (SPEC §6) that ``attribute(text_or_ids, target, units=..., ...)`` scores, without running
        the model: a preview for the caller, and what a server counts to estimate the cost. For a continuation
        string, the units of its last token's context.

        Raises:
            HetaInputError: as :meth:`attribute` would (empty text, target out of range, spans that do not match
                the text, units of token ids without text).
        """
        opts = options_from_preset(preset, **overrides) if preset else self.options.replace(**overrides)
        enc = self._encode(text_or_ids, opts.special_tokens)
        check_target(target)
        if isinstance(target, str):
            enc = self._with_continuation(enc, target)
            t = enc.ids.numel() - 1
        else:
            t = target_position(enc.ids.numel(), target)
        return context_units(opts, enc.text, enc.offsets, t)

    # ---------------------------------------------------------------------------------- internals
    def _lead(self, enc: _Encoded, opts: HetaOptions) -> list[int]:
        """The tokens put in front of every window and left out of M, S and I: the sink token (unless the
        tokenised input already starts with it), then the special tokens the tokenizer added (split off by
        ``special_tokens="sink"``)."""
        first = enc.specials[0] if enc.specials else int(enc.ids[0])
        sink = resolve_sink(opts.sink_token, self.tokenizer, self.adapter.vocab_size, first)
        if opts.sink_token == "auto" and enc.specials:  # the tokenizer put the model's sink (a BOS) in place
            sink = None
        lead = list(enc.specials)
        if sink is not None and not (lead and lead[0] == sink):
            lead = [sink, *lead]
        return lead

    def _build(self, enc: _Encoded, t: int, opts: HetaOptions, ex: Explanation) -> Attribution:
        return Attribution(
            tokens=[self._token_text(enc, i) for i in range(t)],
            token_ids=[int(x) for x in enc.ids[:t].tolist()],
            target_position=t,
            target_id=int(enc.ids[t]),
            target_token=self._token_text(enc, t),
            scores=floats(ex.scores),
            M=floats(ex.M),
            S=floats(ex.S),
            I=floats(ex.I),
            offsets=enc.offsets[:t] if enc.offsets is not None else None,
            text=enc.text,
            target_logprob=ex.target_logprob,
            options=opts.to_dict(),
            timings=ex.timings,
            model=self.name,
            sink_gate_mass=ex.sink_gate_mass,
        )


def check_target(target) -> None:
    """Raise HetaInputError unless ``target`` is None, a continuation string or an integer position."""
    if target is not None and not isinstance(target, str) and not is_integer(target):
        raise HetaInputError(f"target must be a position (an integer), a continuation (a string) or None, "
                             f"got {target!r} ({type(target).__name__})")


def target_position(n: int, target: int | None) -> int:
    """The position of an integer target (None = the last token; negative counts from the end) among n tokens.

    Raises:
        HetaInputError: a single token, position 0 (no context before it), or a position out of range.
    """
    if n < 2:
        raise HetaInputError("the input has a single token: there is no context to attribute to")
    pos = n - 1 if target is None else int(target)
    if pos < 0:
        pos += n
    if pos == 0 or (target is not None and int(target) == -n):
        raise HetaInputError("target position 0 has no context before it; choose a position >= 1")
    if not 1 <= pos <= n - 1:
        raise HetaInputError(f"target position {target} is out of range for {n} tokens (valid: 1 … {n - 1})")
    return pos


def attribute(model, tokenizer, text_or_ids, target=None, **kw):
    """One-shot convenience: ``Attributor(model, tokenizer).attribute(text_or_ids, target, **kw)``."""
    return Attributor(model, tokenizer).attribute(text_or_ids, target, **kw)
