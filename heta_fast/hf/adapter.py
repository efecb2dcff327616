"""The model adapter: one object that sees every causal LM the same way.

Embeddings, output and value projections, the LM head and the decoder layers are looked up by name, with a
clear error when a model does not have them; forwards run through heta_fast's recording attention
(:mod:`heta_fast.hf.attention`), and the residual stream entering a layer can be swapped for curvature with
respect to the last k layers.

The user's model is never changed. heta_fast runs on a *working view* of it (:func:`working_view`): a copy
of the module tree that shares every weight and buffer (no memory for weights), in eval mode, with
parameters that do not require gradients and heta_fast's attention implementation on its own configs. Hooks
heta_fast registers live on the view's modules. So the model's own outputs, its ``output_attentions``, its
train/eval mode and its grad flags are exactly what they were, during and after an attribution, for the
caller and for any other thread or :class:`~heta_fast.Attributor` using it.
"""

from __future__ import annotations

import contextlib
import copy
import threading

import torch
from torch import Tensor, nn

from ..errors import HetaInputError, UnsupportedModelError
from .attention import ATTN_IMPL, Recorder, last_query_only, recording, register_attention
from .cache import cache_kwargs


def _conv1d_or_linear_weight(mod: nn.Module) -> Tensor:
    """Weight as ``[out, in]`` for nn.Linear and for GPT-2's Conv1D (which stores ``[in, out]``)."""
    if isinstance(mod, nn.Linear):
        return mod.weight
    if type(mod).__name__ == "Conv1D":
        return mod.weight.t()
    raise UnsupportedModelError(f"unsupported projection type {type(mod).__name__}")


def _find_layer_list(model: nn.Module, num_layers: int) -> nn.ModuleList:
    for name in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.layers"):
        obj = model
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList) and len(obj) == num_layers:
            return obj
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == num_layers:
            return mod
    raise UnsupportedModelError(f"cannot find the list of {num_layers} decoder layers in {type(model).__name__}")


def _find_attention(layer: nn.Module) -> nn.Module:
    for name in ("self_attn", "attn", "attention", "self_attention"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise UnsupportedModelError(f"cannot find the attention module of {type(layer).__name__}")


def _text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def check_supported(model: nn.Module) -> None:
    """Refuse, before any work, a model heta_fast cannot explain, naming the reason."""
    cfg = _text_config(model)
    if getattr(cfg, "is_encoder_decoder", False):
        raise UnsupportedModelError("encoder-decoder models are not supported; HETA needs a decoder-only model")
    if getattr(cfg, "use_bidirectional_attention", False):
        raise UnsupportedModelError("this model uses bidirectional attention; HETA needs causal attention")
    # transformers' own test of whether a model dispatches attention through AttentionInterface (Falcon,
    # for one, computes attention inline); heta_fast sees attention only through that interface.
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        raise UnsupportedModelError(
            f"{type(model).__name__} computes attention inside its own modules instead of through transformers' "
            "attention interface (AttentionInterface), so heta_fast cannot see its attention probabilities, "
            "values or second derivatives; this architecture is not supported"
        )
    for p in model.parameters():
        if p.device.type == "meta":
            raise UnsupportedModelError(
                "some weights are offloaded (on the 'meta' device, e.g. device_map with disk or CPU offload); "
                "heta_fast needs every weight in memory on a real device"
            )


def _state_signature(model: nn.Module) -> tuple:
    """What a working view depends on: the module objects and every weight's identity, storage, dtype, device
    and in-place version. A change means the view must be rebuilt."""
    tensors = tuple(
        (id(t), t.data_ptr(), t.dtype, t.device, tuple(t.shape), t._version)
        for t in (*model.parameters(), *model.buffers())
    )
    return tuple(id(m) for m in model.modules()), tensors


def working_view(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares its weights and buffers, for heta_fast to run on.

    Parameters that require gradients are shared through a frozen alias (same storage, ``requires_grad``
    off: HETA differentiates with respect to inputs only); everything else (buffers, frozen or integer
    weights) is the same tensor. The modules and configs are copies, so the view's eval mode, attention
    implementation and hooks never reach the model. Costs a few tens of milliseconds on a 30-layer model.
    """
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False) if p.requires_grad else p
    for b in model.buffers():
        memo[id(b)] = b
    view = copy.deepcopy(model, memo)
    view.eval()
    if hasattr(view, "set_attn_implementation"):
        view.set_attn_implementation(ATTN_IMPL)
    configs = {id(view.config): view.config, id(_text_config(view)): _text_config(view)}
    for c in configs.values():
        c._attn_implementation = ATTN_IMPL
    return view


class ModelAdapter:
    """A HuggingFace causal LM seen through HETA's eyes.

    Args:
        model: any ``AutoModelForCausalLM`` whose attention goes through transformers' attention interface.

    ``model`` itself is left untouched: the adapter runs a :func:`working_view` of it (``self.model``;
    ``self.source`` is the model given). Enter :meth:`attached` around each piece of work: it refreshes the view
    when the model's weights or modules changed since (``model.to(...)``, an optimizer step, a swapped
    module) and runs one caller at a time on this adapter.
    """

    def __init__(self, model: nn.Module):
        register_attention()
        check_supported(model)
        self.source = model
        self._lock = threading.RLock()
        self._depth = 0
        self._scaled_head = None
        self._build_view()
        self._check_wiring()
        self._check_attention_interface()

    def _build_view(self) -> None:
        """(Re)build the working view and every module reference into it."""
        self._signature = _state_signature(self.source)
        model = working_view(self.source)
        self.model = model
        self._scaled_head = None
        # What a decoder layer returns (a tensor: 0, a tuple: its length; -1 otherwise), learnt from the first
        # forward: a forward that swaps the input of layer j skips layers 0 … j−1 by returning their input in that form.
        self._layer_output_form: int | None = None
        self.config = _text_config(model)
        self.num_layers = int(self.config.num_hidden_layers)
        self.layers = _find_layer_list(model, self.num_layers)
        self.attentions = [_find_attention(layer) for layer in self.layers]
        self.num_heads = int(self.config.num_attention_heads)
        self.num_kv_heads = int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)
        self.hidden_size = int(self.config.hidden_size)
        self.head_dim = int(getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads)
        emb = model.get_input_embeddings()
        if emb is None or not hasattr(emb, "weight"):
            raise UnsupportedModelError("model has no input embedding table")
        self.embedding = emb
        # Gemma-style models scale the embedding inside the embedding module; SPEC.md defines X before it.
        scale = getattr(emb, "embed_scale", None)
        self.embed_scale = float(scale) if scale is not None else 1.0

    @contextlib.contextmanager
    def attached(self):
        """The block's work runs on an up-to-date working view, one caller at a time (re-entrant).

        Other threads using this adapter wait; other code (and other adapters) using the model do not, since
        nothing of heta_fast's is on the model itself.
        """
        with self._lock:
            if self._depth == 0 and _state_signature(self.source) != self._signature:
                self._build_view()
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1

    @property
    def view_state(self) -> tuple:
        """The model's state (modules, weights and their versions) the current working view was built from."""
        return self._signature

    # ------------------------------------------------------------------ setup
    def _check_wiring(self) -> None:
        # Output projections must exist for the value norms; refuse rather than fall back to ones.
        for attn in self.attentions:
            self.output_projection(attn)

    def _check_attention_interface(self) -> None:
        """One two-token forward must reach heta_fast's attention in every layer, or the model is refused now
        (rather than with a missing layer deep inside an attribution)."""
        ids = torch.zeros(2, dtype=torch.long, device=self.device)
        with torch.no_grad(), self.record() as rec:
            self.forward(self.embed(ids))
        if not rec.layers:
            raise UnsupportedModelError(
                f"{type(self.source).__name__} never called transformers' attention interface (AttentionInterface), "
                "so heta_fast cannot see its attention; this architecture is not supported"
            )

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def ffn_width(self) -> int:
        """MLP hidden width (for memory estimates); 4·d when the config does not name it."""
        cfg = self.config
        return int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * self.hidden_size)

    @property
    def attention_softcap(self) -> bool:
        """Whether attention scores are soft-capped (Gemma-2): such attention runs eagerly, holding its scores."""
        return bool(getattr(self.config, "attn_logit_softcapping", None))

    @property
    def vocab_size(self) -> int:
        return int(self.embedding.weight.shape[0])

    # -------------------------------------------------------------- weights
    def output_projection(self, attn: nn.Module) -> Tensor:
        """``W_O`` as ``[d_model, H * d_h]``; column block h is ``W_O^h``."""
        for name in ("o_proj", "c_proj", "dense", "out_proj"):
            mod = getattr(attn, name, None)
            if mod is not None:
                w = _conv1d_or_linear_weight(mod)
                if w.shape[1] != self.num_heads * self.head_dim:
                    raise UnsupportedModelError(
                        f"output projection {name} has input size {w.shape[1]}, expected H*d_h = "
                        f"{self.num_heads * self.head_dim}"
                    )
                return w
        raise UnsupportedModelError(
            f"{type(attn).__name__} has no output projection named o_proj/c_proj/dense/out_proj; "
            "value norms cannot be computed"
        )

    def value_projection(self, attn: nn.Module) -> Tensor:
        """``W_V`` as ``[H_kv * d_h, d_model]`` (no bias), for fused and separate QKV layouts."""
        kv = self.num_kv_heads * self.head_dim
        q = self.num_heads * self.head_dim
        if hasattr(attn, "v_proj"):
            return _conv1d_or_linear_weight(attn.v_proj)
        if hasattr(attn, "qkv_proj"):  # Phi-3: rows [q | k | v]
            return _conv1d_or_linear_weight(attn.qkv_proj)[q + kv : q + 2 * kv]
        if hasattr(attn, "c_attn"):  # GPT-2: Conv1D with columns [q | k | v]
            return _conv1d_or_linear_weight(attn.c_attn)[q + kv : q + 2 * kv]
        if hasattr(attn, "query_key_value"):
            w = _conv1d_or_linear_weight(attn.query_key_value)
            if getattr(attn, "multi_query", False) and not getattr(attn, "new_decoder_architecture", False):
                return w[q + kv : q + 2 * kv]  # Falcon's multi-query layout: rows [q | k | v], one kv head
            # GPT-NeoX and Falcon: rows grouped per kv head, [its queries | k | v] (GPT-NeoX: one query a group).
            group = self.num_heads // self.num_kv_heads + 2
            return w.reshape(self.num_kv_heads, group, self.head_dim, -1)[:, -1].reshape(kv, -1)
        raise UnsupportedModelError(
            f"{type(attn).__name__} has no v_proj/qkv_proj/c_attn/query_key_value value projection"
        )

    @property
    def logit_multiplier(self) -> float:
        """The factor a model applies to its LM head's output: Cohere multiplies by ``logit_scale``, Granite
        divides by ``logits_scaling``; 1 for every other model."""
        factor = 1.0
        scale = getattr(self.config, "logit_scale", None)
        if scale is not None:
            factor *= float(scale)
        divisor = getattr(self.config, "logits_scaling", None)
        if divisor is not None:
            factor /= float(divisor)
        return factor

    def lm_head(self) -> tuple[Tensor, Tensor | None, float]:
        """``(weight [V, d], bias [V] | None, final logit softcap or 0)`` such that
        :func:`~heta_fast.hf.head.head_logits` gives the model's logits (checked against the model where used).

        A logit multiplier (:attr:`logit_multiplier`) is folded into the weight and bias: a scaled copy of the
        output table, made once per view (the memory of one more LM head, for those models only).
        """
        head = self.model.get_output_embeddings()
        if head is None:
            raise UnsupportedModelError("model has no output embedding (LM head)")
        softcap = float(getattr(self.config, "final_logit_softcapping", None) or 0.0)
        weight, bias = head.weight, getattr(head, "bias", None)
        factor = self.logit_multiplier
        if factor == 1.0:
            return weight, bias, softcap
        if self._scaled_head is None:
            with torch.no_grad():
                self._scaled_head = (weight * factor, None if bias is None else bias * factor)
        return (*self._scaled_head, softcap)

    def first_layer(self, last_k: int | None) -> int:
        """Index of the first of the last ``last_k`` layers (0 for None: every layer); the ``layers`` option's
        meaning everywhere (rollout sum, curvature variable, memory estimates)."""
        if last_k is None:
            return 0
        if isinstance(last_k, bool) or not isinstance(last_k, int) or last_k < 1:
            raise HetaInputError(f"layers must be None or a positive number of final layers, got {last_k!r}")
        if last_k > self.num_layers:
            raise HetaInputError(f"layers={last_k} but the model has only {self.num_layers} layers")
        return self.num_layers - last_k

    # --------------------------------------------------------------- inputs
    def embed(self, ids: Tensor) -> Tensor:
        """X: rows of the embedding table, ``[n, d]``, before any model-internal scaling."""
        return self.embedding.weight[ids]

    def check_ids(self, ids: Tensor) -> None:
        if ids.ndim != 1:
            raise HetaInputError(f"token ids must be a 1-D sequence, got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise HetaInputError("empty input: there are no tokens to explain")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise HetaInputError(
                f"token id {int(ids[bad][0])} is outside the model vocabulary (size {self.vocab_size})"
            )

    # -------------------------------------------------------------- forward
    def forward(
        self,
        X: Tensor,
        *,
        keep_last: bool = True,
        keep: Tensor | None = None,
        replace_layer_input: tuple[int, Tensor] | None = None,
        past_key_values=None,
    ):
        """Run the model on embedding rows ``X [B, n, d]`` (or ``[n, d]``); returns the HF output.

        ``replace_layer_input=(j, h)`` swaps the residual stream entering decoder layer j for ``h``
        (used for curvature with respect to the last k layers). Logits are computed at the last
        position only when ``keep_last``, at the positions ``keep`` when given, else everywhere.
        """
        if X.ndim == 2:
            X = X[None]
        inputs = X * self.embed_scale if self.embed_scale != 1.0 else X
        with contextlib.ExitStack() as stack:
            if self._layer_output_form is None:
                stack.enter_context(self._learn_layer_output_form())
            if replace_layer_input is not None:
                j, h = replace_layer_input
                stack.enter_context(self._swap_layer_input(j, h[None] if h.ndim == 2 else h))
            return self.model(
                inputs_embeds=inputs,
                logits_to_keep=keep if keep is not None else (1 if keep_last else 0),
                **cache_kwargs(self.model, past_key_values),
            )

    @contextlib.contextmanager
    def _swap_layer_input(self, j: int, h: Tensor):
        """Layer j receives ``h`` as its input; layers 0 … j−1, whose output is thrown away, are not computed
        (once the form of a layer's output is known; until then they run). Their KV-cache entries are then
        missing, which is harmless: a forward with a swapped input never hands its cache to another."""

        def swap(_mod, args, kwargs):
            if args:
                return (h, *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = h
            return args, kwargs

        form = self._layer_output_form

        def skip(hidden_states=None, *args, **kwargs):
            if hidden_states is None:
                hidden_states = args[0] if args else kwargs["hidden_states"]
            # A tuple's other entries (attention weights: Falcon) are read only when the caller asks for them.
            return hidden_states if form == 0 else (hidden_states,) + (None,) * (form - 1)

        handle = self.layers[j].register_forward_pre_hook(swap, with_kwargs=True)
        skipped = self.layers[:j] if form is not None and form >= 0 else []
        try:
            for layer in skipped:
                layer.forward = skip  # an instance attribute: nn.Module.__call__ runs it instead of the class's
            yield
        finally:
            handle.remove()
            for layer in skipped:
                del layer.forward

    @contextlib.contextmanager
    def _learn_layer_output_form(self):
        """Record what the first decoder layer returns during the block: a tensor (0), a tuple led by the hidden
        states (its length), anything else (-1: layers are then never skipped)."""

        def seen(_mod, _args, out):
            if isinstance(out, Tensor):
                self._layer_output_form = 0
            elif isinstance(out, tuple) and out and isinstance(out[0], Tensor):
                self._layer_output_form = len(out)
            else:
                self._layer_output_form = -1

        handle = self.layers[0].register_forward_hook(seen)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def last_row_only(self):
        """Forwards inside the block compute the final decoder layer for the last position only: its attention
        attends from that row alone (:func:`~heta_fast.hf.attention.last_query_only`) and its MLP (a module named
        ``mlp``, where there is one) sees that row alone; the other rows of the final hidden states are
        meaningless.

        For callers that read nothing but the last position's final hidden state (the Hessian term's graphs, the
        KL pass of one target): everything after the final layer's attention is row-wise, so that row is exact,
        and one curvature product over the last 6 layers at 4,006 tokens takes about a fifth less time
        (``benchmarks/RESULTS.md``, *The final layer for one row*).
        """
        mlp = getattr(self.layers[-1], "mlp", None)
        handles = []
        if isinstance(mlp, nn.Module):
            rows: list[int] = []

            def keep_last(_mod, args, kwargs):
                name = None if args else next(iter(kwargs), None)
                h = args[0] if args else kwargs.get(name)
                if not isinstance(h, Tensor) or h.ndim != 3 or h.shape[1] < 2:
                    return None
                rows.append(h.shape[1])
                if args:
                    return (h[:, -1:], *args[1:]), kwargs
                return args, {**kwargs, name: h[:, -1:]}

            def pad(_mod, _args, _kwargs, out):
                if not rows:
                    return None
                n = rows.pop()
                first = out[0] if isinstance(out, tuple) else out
                if not isinstance(first, Tensor) or first.ndim != 3 or first.shape[1] != 1:
                    raise UnsupportedModelError(
                        f"the final layer's MLP ({type(mlp).__name__}) returned {type(out).__name__}, not rows")
                full = torch.cat([first.new_zeros(first.shape[0], n - 1, *first.shape[2:]), first], dim=1)
                return (full, *out[1:]) if isinstance(out, tuple) else full

            handles = [mlp.register_forward_pre_hook(keep_last, with_kwargs=True),
                       mlp.register_forward_hook(pad, with_kwargs=True)]
        try:
            with last_query_only(self.num_layers - 1):
                yield
        finally:
            for h in handles:
                h.remove()

    def last_logits(self, X: Tensor, **kw) -> Tensor:
        """Logits at the last row of X: ``[V]`` (or ``[B, V]`` for batched X)."""
        out = self.forward(X, **kw).logits[:, -1]
        return out[0] if X.ndim == 2 else out

    @contextlib.contextmanager
    def head_input(self):
        """Collect what the LM head receives (the final hidden states it turns into logits) during the block."""
        seen: list[Tensor] = []

        def grab(_mod, args, kwargs):
            seen.append(args[0] if args else next(iter(kwargs.values())))

        handle = self.model.get_output_embeddings().register_forward_pre_hook(grab, with_kwargs=True)
        try:
            yield seen
        finally:
            handle.remove()

    @contextlib.contextmanager
    def record(self, *, keep_probs: bool = False, keep_qk: bool = False, layer_inputs: bool = False):
        """Record every layer's attention tensors during the forwards run inside the block."""
        rec = Recorder(keep_probs=keep_probs, keep_qk=keep_qk)
        handles = []
        if layer_inputs:
            for j, layer in enumerate(self.layers):

                def grab(_mod, args, kwargs, j=j):
                    h = args[0] if args else kwargs["hidden_states"]
                    rec.layer_inputs[j] = h[0]

                handles.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
        try:
            with recording(rec):
                yield rec
        finally:
            for hd in handles:
                hd.remove()
        missing = [j for j in range(self.num_layers) if j not in rec.layers]
        if rec.layers and missing:
            raise UnsupportedModelError(
                f"layers {missing[:5]} did not call transformers' attention interface; "
                "this architecture is not supported"
            )
