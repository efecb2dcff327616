"""The public API: :class:`Attributor` turns text or ids plus a target into :class:`Attribution` results."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from . import reference
from .cpu_allocator import tune_malloc_for_tensors
from .engine import evaluate, evaluate_many
from .errors import HetaInputError, NumericalError
from .hf import ModelAdapter
from .options import HetaOptions, options_from_preset, resolve_layers
from .result import Attribution, AttributionSequence
from .sinks import resolve_sink


@dataclass
class _Encoded:
    ids: Tensor  # [n] all tokens (prompt + continuation)
    offsets: list[tuple[int, int]] | None
    text: str | None
    prompt_len: int  # number of prompt tokens


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


class _StageBars:
    """One progress bar per long stage (Hessian–vector products, masked KL rows), created on first use."""

    LABELS = {"S": "Hessian-vector products", "I": "masked tokens (KL)"}

    def __init__(self, enabled: bool, totals: dict):
        self.enabled, self.totals, self.bars = enabled, totals, {}

    def update(self, stage: str, n: int) -> None:
        if not self.enabled:
            return
        if stage not in self.bars:
            self.bars[stage] = _progress_bar(self.totals.get(stage) or 0, self.LABELS.get(stage, stage), True)
        self.bars[stage].update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for bar in self.bars.values():
            bar.close()


class Attributor:
    """HETA attributions for one causal LM.

    Args:
        model: a HuggingFace causal LM (any ``AutoModelForCausalLM``), already loaded.
        tokenizer: its tokenizer; optional when you pass token ids.
        options: default :class:`HetaOptions` (``attribute`` may override any of them).
        progress: show progress bars for long work.

    The model is put in eval mode, its parameters stop requiring gradients (HETA differentiates with
    respect to the inputs only), and its attention implementation becomes heta_fast's recording one
    (numerically the model's own attention; it keeps working for ordinary use).
    """

    def __init__(self, model, tokenizer=None, *, options: HetaOptions | None = None, progress: bool = False,
                 name: str | None = None):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or HetaOptions()
        self.progress = progress
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.adapter = ModelAdapter(model)
        if self.adapter.device.type == "cpu":
            tune_malloc_for_tensors()
        self._reference_adapter: ModelAdapter | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", *, dtype=torch.float32, device: str = "cpu",
                        preset: str = "default", progress: bool = False, **options) -> Attributor:
        """Load ``"default"`` (SmolLM2-135M-Instruct), ``"gemma3-270m"`` (both from GGUF wheels, offline) or a
        local HF folder."""
        from .models import load_model, model_display_name

        model, tok = load_model(name_or_path, dtype=dtype, device=device)
        name = model_display_name(name_or_path)
        return cls(model, tok, options=options_from_preset(preset, **options), progress=progress, name=name)

    # ------------------------------------------------------------------------------------ encoding
    def _encode(self, text_or_ids) -> _Encoded:
        if isinstance(text_or_ids, str):
            if not text_or_ids.strip():
                raise HetaInputError("empty text: there is nothing to explain")
            if self.tokenizer is None:
                raise HetaInputError("text input needs a tokenizer; pass token ids or give Attributor a tokenizer")
            enc = self.tokenizer(text_or_ids, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            offsets = [tuple(o) for o in enc["offset_mapping"]]
            text = text_or_ids
        else:
            ids = torch.as_tensor(text_or_ids).reshape(-1).tolist() if not isinstance(text_or_ids, list) \
                else list(text_or_ids)
            offsets, text = None, None
        if not ids:
            raise HetaInputError("empty input: there are no tokens to explain")
        t = torch.tensor(ids, dtype=torch.long, device=self.adapter.device)
        self.adapter.check_ids(t)
        return _Encoded(ids=t, offsets=offsets, text=text, prompt_len=len(ids))

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
        return _Encoded(ids=ids, offsets=offsets, text=text, prompt_len=prompt.prompt_len)

    def _token_text(self, enc: _Encoded, i: int) -> str:
        if enc.offsets is not None and enc.text is not None:
            s, e = enc.offsets[i]
            if e > s:
                return enc.text[s:e]
        tid = int(enc.ids[i])
        if self.tokenizer is not None:
            return self.tokenizer.decode([tid])
        return f"<{tid}>"

    def _generate(self, ids: Tensor, n_new: int, sink: int | None = None) -> list[int]:
        """Greedy continuation of ``ids`` (after the sink token, if any) by ``n_new`` tokens."""
        new: list[int] = []
        seq = ids if sink is None else torch.cat([ids.new_tensor([sink]), ids])
        with torch.no_grad():
            for _ in range(n_new):
                logits = self.adapter.last_logits(self.adapter.embed(seq))
                if not torch.isfinite(logits).all():
                    raise NumericalError("the model produced non-finite logits (NaN/Inf); check its weights")
                nxt = int(logits.argmax())
                new.append(nxt)
                seq = torch.cat([seq, seq.new_tensor([nxt])])
        return new

    # --------------------------------------------------------------------------------- attribution
    def attribute(self, text_or_ids, target: int | str | None = None, *, generate: int | None = None,
                  probes: Tensor | None = None, preset: str | None = None, **overrides):
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
            **overrides: any :class:`HetaOptions` field (beta, gamma, num_probes, seed, rollout, hessian,
                rank, curvature, layers, mask, mask_token_id, normalize, components, window, overlap,
                sink_token, engine, max_memory).

        Returns:
            :class:`Attribution` for one target, :class:`AttributionSequence` for a continuation.
        """
        opts = options_from_preset(preset, **overrides) if preset else self.options.replace(**overrides)
        if generate is not None and target is not None:
            raise HetaInputError("give either target= or generate=, not both")
        base = self._encode(text_or_ids)
        # Record the sink and the layers actually used (an id or None, a number or None), not "auto".
        opts = opts.replace(sink_token=resolve_sink(opts.sink_token, self.tokenizer, self.adapter.vocab_size,
                                                    int(base.ids[0])),
                            layers=resolve_layers(opts.layers, self.adapter.num_layers))
        if generate is not None:
            if generate < 1:
                raise HetaInputError(f"generate must be >= 1, got {generate}")
            enc = base
            # Generated with the same sink the explanation runs with, so the targets are the model's own.
            new_ids = self._generate(enc.ids, generate, sink=opts.sink_token)
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
            n = enc.ids.numel()
            if n < 2:
                raise HetaInputError("the input has a single token: there is no context to attribute to")
            pos = n - 1 if target is None else int(target)
            if pos < 0:
                pos += n
            if pos == 0 or (target is not None and int(target) == -n):
                raise HetaInputError("target position 0 has no context before it; choose a position >= 1")
            if not 1 <= pos <= n - 1:
                raise HetaInputError(f"target position {target} is out of range for {n} tokens (valid: 1 … {n - 1})")
            positions = [pos]
        if probes is not None and len(positions) != 1:
            raise HetaInputError("probes= can only be given for a single target")
        results = AttributionSequence(self._attribute_positions(enc, positions, opts, probes))
        return results[0] if len(positions) == 1 and not isinstance(target, str) and generate is None else results

    # ---------------------------------------------------------------------------------- internals
    def _adapter_for(self, opts: HetaOptions) -> ModelAdapter:
        if opts.engine == "fast":
            return self.adapter
        if self._reference_adapter is None:
            self._reference_adapter = ModelAdapter(copy.deepcopy(self.model).to(torch.float64))
        return self._reference_adapter

    def _attribute_positions(self, enc: _Encoded, positions: list[int], opts: HetaOptions,
                             probes: Tensor | None) -> list[Attribution]:
        adapter = self._adapter_for(opts)
        ids = enc.ids
        # With a sink token every run sees [sink] + tokens; `lead` shifts positions into that sequence.
        lead = ids.new_tensor([] if opts.sink_token is None else [opts.sink_token])
        t_start = time.perf_counter()
        mask_vec = None
        if "I" in opts.components:
            mask_vec = reference.mask_vector(adapter, ids, opts.mask, opts.mask_token_id).detach()
        # One forward gives every target's log-probability (logits only at the positions asked for).
        with torch.no_grad():
            X = adapter.embed(torch.cat([lead, ids[: max(positions)]]))
            rows = torch.tensor([t - 1 + lead.numel() for t in positions], device=ids.device)
            logits = adapter.forward(X, keep=rows).logits[0]
        if not torch.isfinite(logits).all():
            raise NumericalError("the model produced non-finite logits (NaN/Inf); check its weights and dtype")
        logp = torch.log_softmax(logits.double(), -1)
        target_logprobs = [float(logp[k, int(ids[t])]) for k, t in enumerate(positions)]
        setup = time.perf_counter() - t_start

        shared = len(positions) > 1 and opts.engine == "fast" and (opts.window is None or max(positions) <= opts.window)
        if shared:  # several targets of one text: gate and KL share their forwards (engine.evaluate_many)
            d, k = adapter.hidden_size, lead.numel()
            comps = evaluate_many(adapter, torch.cat([lead, ids]), [t + k for t in positions], opts, mask_vec=mask_vec,
                                  probes=[_window_probes(self._context_probes(None, opts, d, t), 0, t, k > 0)
                                          for t in positions])
            parts = [(*_drop_lead(c.M, c.S, c.I, k), dict(c.timings)) for c in comps]
        else:
            parts = []
            bar = _progress_bar(len(positions), "targets", self.progress and len(positions) > 1)
            for t in positions:
                parts.append(self._windowed_components(adapter, ids, t, opts, probes, mask_vec, lead))
                bar.update(1)
            bar.close()
        out = []
        for t, logprob, (M, S, I, sink_mass, timings) in zip(positions, target_logprobs, parts, strict=True):
            timings["total"] = sum(timings.values()) + setup / len(positions)
            out.append(self._build(enc, t, opts, M, S, I, timings, logprob, sink_mass))
        return out

    def _windowed_components(self, adapter: ModelAdapter, ids: Tensor, t: int, opts: HetaOptions,
                             probes: Tensor | None, mask_vec: Tensor | None, lead: Tensor):
        """M, S, I ``[t]`` for target position t: one window, or the averages over windows (SPEC §4).

        ``lead`` is the sink token (empty without one): each window is run as lead + its tokens and the
        lead is dropped from it again.
        Returns ``(M, S, I, sink gate mass averaged over windows or None, timings)``.
        """
        ctx = ids[:t]
        sink_masses: list[float] = []
        target_id = int(ids[t])
        timings: dict[str, float] = {}
        windows = self._windows(t, opts)
        d = adapter.hidden_size
        sums: dict[str, Tensor] = {}
        counts = torch.zeros(t, dtype=torch.float64)
        full_probes = self._context_probes(probes, opts, d, t)  # drawn once, sliced per window
        bar = _progress_bar(len(windows), "windows", self.progress and len(windows) > 1)
        for start in windows:
            w_ids = ctx[start : start + (opts.window or t)]
            w_len = w_ids.numel()
            w_probes = _window_probes(full_probes, start, w_len, sink=lead.numel() > 0)
            n_run = w_len + lead.numel()
            with _StageBars(self.progress, totals={"S": n_run * opts.num_probes if opts.hessian == "exact" else None,
                                                    "I": n_run}) as bars:
                comp = evaluate(adapter, torch.cat([lead, w_ids]), target_id, opts, probes=w_probes,
                                mask_vec=mask_vec, progress=bars.update)
            for k, v in comp.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            *window_comps, sink_mass = _drop_lead(comp.M, comp.S, comp.I, lead.numel())
            if sink_mass is not None:
                sink_masses.append(sink_mass)
            for name, val in zip(("M", "S", "I"), window_comps, strict=True):
                if val is not None:
                    acc = sums.setdefault(name, torch.zeros(t, dtype=torch.float64))
                    acc[start : start + w_len] += val.detach().double().cpu()
            counts[start : start + w_len] += 1
            bar.update(1)
        bar.close()
        M = S = I = None
        if "M" in sums:
            M = sums["M"] / counts
            M = M / M.sum()  # windows each sum to 1; re-normalise the average (SPEC §4)
        if "S" in sums:
            S = sums["S"] / counts
        if "I" in sums:
            I = sums["I"] / counts
        sink_mass = sum(sink_masses) / len(sink_masses) if sink_masses else None
        return M, S, I, sink_mass, timings

    def _build(self, enc: _Encoded, t: int, opts: HetaOptions, M, S, I, timings: dict,
               target_logprob: float, sink_gate_mass: float | None = None) -> Attribution:
        M, S, I = (None if v is None else v.detach().double().cpu() for v in (M, S, I))
        for name, val in (("M", M), ("S", S), ("I", I)):
            if val is not None and not torch.isfinite(val).all():
                raise NumericalError(f"component {name} has non-finite values; check the model's weights and dtype")
        scores = reference.combine(M, S, I, opts.beta, opts.gamma, opts.normalize)

        def floats(v):
            return None if v is None else [float(x) for x in v.tolist()]

        return Attribution(
            tokens=[self._token_text(enc, i) for i in range(t)],
            token_ids=[int(x) for x in enc.ids[:t].tolist()],
            target_position=t,
            target_id=int(enc.ids[t]),
            target_token=self._token_text(enc, t),
            scores=floats(scores),
            M=floats(M),
            S=floats(S),
            I=floats(I),
            offsets=enc.offsets[:t] if enc.offsets is not None else None,
            text=enc.text,
            target_logprob=target_logprob,
            options=opts.to_dict(),
            timings=timings,
            model=self.name,
            sink_gate_mass=sink_gate_mass,
        )

    @staticmethod
    def _windows(t: int, opts: HetaOptions) -> list[int]:
        """Window start positions: stride W(1-ρ), the last window flush with the end of the context."""
        W = opts.window
        if W is None or t <= W:
            return [0]
        stride = max(1, int(round(W * (1 - opts.overlap))))
        starts = list(range(0, t - W + 1, stride))
        if starts[-1] != t - W:
            starts.append(t - W)
        return starts

    def _context_probes(self, probes: Tensor | None, opts: HetaOptions, d: int, t: int) -> Tensor | None:
        """The probes of the whole context ``[t, m, d]``: the given ones (checked) or seeded ones; None without S."""
        if "S" not in opts.components:
            return None
        if probes is None:
            # Drawn for the whole context in (i, k) order, so a token's probes do not depend on windowing.
            return reference.draw_probes(t, opts.num_probes, d, opts.seed)
        full = torch.as_tensor(probes)
        if opts.layers is None and (full.ndim != 3 or full.shape[0] != t or full.shape[2] != d):
            raise HetaInputError(f"probes must have shape [t={t}, m, d={d}], got {tuple(full.shape)}")
        return full


def _window_probes(full: Tensor | None, start: int, w_len: int, sink: bool) -> Tensor | None:
    """Rows [start, start + w_len) of the context's probes, with a zero row in front for a sink token.

    A zero probe leaves the sink's S at 0 (it is dropped anyway) and the real tokens' probes are those
    of the run without a sink, so S of a token does not depend on whether a sink is used.
    """
    if full is None:
        return None
    window = full[start : start + w_len]
    if sink:
        window = torch.cat([window.new_zeros((1, *window.shape[1:])), window])
    return window


def _drop_lead(M: Tensor | None, S: Tensor | None, I: Tensor | None, k: int):
    """Drop the first k positions (the sink) of a window's components: ``(M, S, I, sink gate mass)``.

    M is re-normalised over the remaining tokens (uniform if none of them gets gate mass, as in SPEC §1).
    """
    if k == 0:
        return M, S, I, None
    mass = None
    if M is not None:
        mass = float(M[:k].sum())
        M = M[k:]
        total = M.sum()
        M = M / total if total > 0 else torch.full_like(M, 1.0 / M.numel())
    return M, None if S is None else S[k:], None if I is None else I[k:], mass


def attribute(model, tokenizer, text_or_ids, target=None, **kw):
    """One-shot convenience: ``Attributor(model, tokenizer).attribute(text_or_ids, target, **kw)``."""
    return Attributor(model, tokenizer).attribute(text_or_ids, target, **kw)
