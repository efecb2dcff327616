"""HuggingFace glue: one adapter that sees every causal LM the same way.

HETA needs, for every layer, the attention queries/keys/probabilities and the value vectors exactly as the
model computes them (after rotary, norms, biases, GQA grouping, sliding windows and soft-capping). Rather
than re-implementing each architecture, heta_fast registers its own attention function with
transformers' ``AttentionInterface``: every supported model calls it with the tensors it already built,
and the function computes plain eager attention (which supports second derivatives) while recording what
the gate needs. Everything else (embeddings, output projections, the LM head) is looked up by name with a
clear error when a model does not have it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_core import attention_core
from .errors import HetaInputError, UnsupportedModelError

ATTN_IMPL = "heta_eager"

_state = threading.local()


@dataclass
class LayerRecord:
    """What one attention layer used in one forward pass (batch element 0).

    Shapes: ``query [H, n, dh]`` (post-rotary), ``key``/``value`` ``[H_kv, n, dh]`` (value exactly as the
    model computes it: normalised input, bias included), ``probs [H, n, n]`` (only when requested).
    """

    query: Tensor
    key: Tensor
    value: Tensor
    scaling: float
    sliding_window: int | None
    softcap: float | None
    probs: Tensor | None = None


@dataclass
class Recorder:
    keep_probs: bool = False
    keep_qk: bool = False
    layers: dict[int, LayerRecord] = field(default_factory=dict)
    layer_inputs: dict[int, Tensor] = field(default_factory=dict)


def _active_recorder() -> Recorder | None:
    return getattr(_state, "recorder", None)


@contextlib.contextmanager
def plain_attention():
    """Within this block attention is the plain eager composition (matmul, mask, softmax, matmul)
    differentiated by autograd, never :mod:`heta_fast.attention_core`: the reference engine runs under it,
    so the fast core's hand-written derivatives are checked against autograd rather than against themselves.
    """
    before = getattr(_state, "plain", False)
    _state.plain = True
    try:
        yield
    finally:
        _state.plain = before


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    # [B, H_kv, n, dh] -> [B, H_kv * n_rep, n, dh]; query head h reads kv head h // n_rep (SPEC notation).
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _causal_bool_mask(q_len: int, k_len: int, device) -> Tensor:
    """[q_len, k_len] True where query row j (at absolute position k_len - q_len + j) may see key i."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos


def _check_causal(mask: Tensor | None, q_len: int, k_len: int) -> None:
    """Refuse masks that let a position see later positions (checked while recording, on the mask)."""
    if mask is None or q_len < 2:
        return
    future = ~_causal_bool_mask(q_len, k_len, mask.device)
    m = mask.reshape(-1, q_len, k_len)[0]
    visible = m[future] if m.dtype == torch.bool else m[future] > torch.finfo(m.dtype).min / 2
    if visible.any():
        raise UnsupportedModelError(
            "attention is not causal (a position attends to later positions); HETA needs a decoder-only model"
        )


def heta_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
):
    """Causal attention that records what HETA needs.

    Whenever a graph is being built (the Hessian term) or the probabilities are requested, the math is
    eager (matmul, softmax, matmul; fused SDPA/flash kernels have no second derivatives): the attention
    core of :mod:`heta_fast.attention_core`, with its hand-written double backward, or, under soft-capping,
    additive masks or :func:`plain_attention`, the plain composition. Otherwise
    (gate recording, masked KL passes) it is torch's SDPA, which never forms the n×n score matrix when the
    mask is purely causal, so long inputs stay O(n) in memory.
    """
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise UnsupportedModelError("attention sinks (s_aux) are not supported by heta_fast yet")
    if not getattr(module, "is_causal", True):
        raise UnsupportedModelError(
            f"{type(module).__name__} uses bidirectional attention; HETA explains causal (decoder-only) models only"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    q_len, k_len = query.shape[-2], key.shape[-2]
    mask = attention_mask[..., :k_len] if attention_mask is not None else None
    rec = _active_recorder()
    if rec is not None:
        _check_causal(mask, q_len, k_len)
    keep_probs = rec is not None and rec.keep_probs
    needs_graph = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    probs = None
    if softcap is None and not keep_probs and not needs_graph:
        k, v = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
        if mask is None:  # transformers dropped the mask because it is purely causal
            causal = q_len == k_len and q_len > 1
            bool_mask = None if causal or q_len == 1 else _causal_bool_mask(q_len, k_len, query.device)
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=bool_mask, is_causal=causal, scale=scaling)
        else:
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask.to(query.dtype) if mask.dtype != torch.bool
                                                 else mask, scale=scaling)
        out = out.transpose(1, 2).contiguous()
    elif (softcap is None and not getattr(_state, "plain", False)
          and (mask is None or (mask.dtype == torch.bool and mask.shape[1] == 1))):
        # Graph or probabilities needed: the core with a hand-written double backward (attention_core.py).
        allowed = _causal_bool_mask(q_len, k_len, query.device) if mask is None else mask
        out, probs = attention_core(query, key, value, allowed, scaling)
        out = out.transpose(1, 2).contiguous()
    else:  # soft-capping, additive masks or plain_attention(): eager math, differentiated by autograd
        scores = torch.matmul(query, _repeat_kv(key, n_rep).transpose(-1, -2)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is None:
            mask = _causal_bool_mask(q_len, k_len, query.device)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
        # Softmax in at least float32, as the models' own eager paths do.
        compute_dtype = torch.promote_types(scores.dtype, torch.float32)
        probs = torch.softmax(scores.to(compute_dtype), dim=-1).to(query.dtype)
        out = torch.matmul(probs, _repeat_kv(value, n_rep)).transpose(1, 2).contiguous()

    if rec is not None:
        layer_idx = getattr(module, "layer_idx", None)
        if layer_idx is None:
            layer_idx = len(rec.layers)
        rec.layers[int(layer_idx)] = LayerRecord(
            query=query[0] if rec.keep_qk else query[0, :, :0],
            key=key[0] if rec.keep_qk else key[0, :, :0],
            value=value[0],
            scaling=float(scaling),
            sliding_window=int(sliding_window) if sliding_window else None,
            softcap=float(softcap) if softcap else None,
            probs=probs[0] if keep_probs else None,
        )
    return out, (probs if keep_probs else None)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPL, heta_attention)
    # SDPA-style masks: boolean, and None when purely causal (then no n×n mask is built at all).
    AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)


def cache_kwargs(module: nn.Module, cache) -> dict:
    """Keyword arguments passing a KV cache (or none) to a HF forward.

    transformers renamed ``past_key_values`` to ``cache``; use whichever the forward accepts.
    """
    if cache is None:
        return {"use_cache": False}
    params = inspect.signature(module.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return {name: cache, "use_cache": True}


def new_full_cache():
    """An empty KV cache that keeps every layer in full, so it can later be cut at any position.

    Built without the model config on purpose: a config-built cache evicts old positions on sliding-window
    layers; the model still applies its sliding-window masks from the positions.
    """
    from transformers import DynamicCache

    return DynamicCache()


def cut_cache(cache, length: int):
    """A copy of a KV cache holding only the first ``length`` positions (the clean prefix of a suffix run).

    transformers changed ``Cache.crop`` from ``crop(max_length)`` to ``crop(-tokens_to_remove)``; support both.
    """
    past = copy.deepcopy(cache)
    remove = past.get_seq_length() - length
    if remove < 0:
        raise ValueError(f"cache holds {past.get_seq_length()} positions, cannot cut it to {length}")
    if remove:
        if "tokens_to_remove" in inspect.signature(past.crop).parameters:
            past.crop(-remove)
        else:
            past.crop(length)
    return past


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


class ModelAdapter:
    """A HuggingFace causal LM seen through HETA's eyes.

    Args:
        model: any ``AutoModelForCausalLM`` whose attention goes through transformers' attention interface.
    """

    def __init__(self, model: nn.Module):
        _register_attention()
        self.model = model
        cfg = model.config
        self.config = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        if getattr(self.config, "is_encoder_decoder", False):
            raise UnsupportedModelError("encoder-decoder models are not supported; HETA needs a decoder-only model")
        if getattr(self.config, "use_bidirectional_attention", False):
            raise UnsupportedModelError("this model uses bidirectional attention; HETA needs causal attention")
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
        self._set_attn_impl()
        self._check_wiring()

    # ------------------------------------------------------------------ setup
    def _set_attn_impl(self) -> None:
        if hasattr(self.model, "set_attn_implementation"):
            self.model.set_attn_implementation(ATTN_IMPL)
        else:  # older transformers
            self.model.config._attn_implementation = ATTN_IMPL
        for c in {id(self.model.config): self.model.config, id(self.config): self.config}.values():
            c._attn_implementation = ATTN_IMPL

    def _check_wiring(self) -> None:
        # Output projections must exist for the value norms; refuse rather than fall back to ones.
        for attn in self.attentions:
            self.output_projection(attn)

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
        raise UnsupportedModelError(f"{type(attn).__name__} has no v_proj/qkv_proj/c_attn value projection")

    def lm_head(self) -> tuple[Tensor, Tensor | None, float]:
        """``(weight [V, d], bias [V] | None, final logit softcap or 0)``, checked against the model elsewhere."""
        head = self.model.get_output_embeddings()
        if head is None:
            raise UnsupportedModelError("model has no output embedding (LM head)")
        for attr in ("logit_scale", "logits_scaling"):
            if getattr(self.config, attr, None) not in (None, 1, 1.0):
                raise UnsupportedModelError(f"logit scaling ({attr}) is not supported by the fast KL path yet")
        softcap = getattr(self.config, "final_logit_softcapping", None) or 0.0
        return head.weight, getattr(head, "bias", None), float(softcap)

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
        handle = None
        if replace_layer_input is not None:
            j, h = replace_layer_input
            h = h[None] if h.ndim == 2 else h

            def swap(_mod, args, kwargs):
                if args:
                    return (h, *args[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = h
                return args, kwargs

            handle = self.layers[j].register_forward_pre_hook(swap, with_kwargs=True)
        try:
            return self.model(
                inputs_embeds=inputs,
                logits_to_keep=keep if keep is not None else (1 if keep_last else 0),
                **cache_kwargs(self.model, past_key_values),
            )
        finally:
            if handle is not None:
                handle.remove()

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
        prev = _active_recorder()
        _state.recorder = rec
        try:
            yield rec
        finally:
            _state.recorder = prev
            for hd in handles:
                hd.remove()
        missing = [j for j in range(self.num_layers) if j not in rec.layers]
        if rec.layers and missing:
            raise UnsupportedModelError(
                f"layers {missing[:5]} did not call transformers' attention interface; "
                "this architecture is not supported"
            )
