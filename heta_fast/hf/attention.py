"""The attention function heta_fast registers with transformers, and the recorder it fills.

Every supported model calls :func:`heta_attention` with the query/key/value tensors it already built (after
rotary, norms, biases, GQA grouping, sliding windows and soft-capping), so HETA sees attention exactly as
the model computes it without re-implementing any architecture. The function computes plain eager attention
(which supports second derivatives) while recording what the gate needs.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention_core import attention_core
from .suffix_attention import CausalMaskCheck, causal_bool_mask, split_causal_attention

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


def active_recorder() -> Recorder | None:
    return getattr(_state, "recorder", None)


@contextlib.contextmanager
def _thread_setting(name: str, value):
    """``_state.<name>`` is ``value`` inside the block (this thread), its previous value (or None) after."""
    before = getattr(_state, name, None)
    setattr(_state, name, value)
    try:
        yield value
    finally:
        setattr(_state, name, before)


def recording(rec: Recorder):
    """Attention calls inside the block (this thread) record into ``rec``."""
    return _thread_setting("recorder", rec)


def plain_attention():
    """Within this block attention is the plain eager composition (matmul, mask, softmax, matmul)
    differentiated by autograd, never :mod:`heta_fast.hf.attention_core`: the reference engine runs under it,
    so the fast core's hand-written derivatives are checked against autograd rather than against themselves.
    """
    return _thread_setting("plain", True)


def last_query_only(layer_idx: int):
    """Within this block, attention layer ``layer_idx`` computes the output of its last query row only and
    returns zeros for the others.

    For the model's final layer when the caller reads nothing but the last position's final hidden state
    (the Hessian term's graphs): every later operation is row-wise, so that row is exact, while the layer's
    attention scores, and their first and second derivatives, shrink from [n, n] to [1, n] per head.
    """
    return _thread_setting("last_query_layer", layer_idx)


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    # [B, H_kv, n, dh] -> [B, H_kv * n_rep, n, dh]; query head h reads kv head h // n_rep (SPEC notation).
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _plainly_causal(attention_mask: Tensor | None, q_len: int, k_len: int) -> bool:
    """True when the mask (None: dropped by transformers as purely causal) is exactly bottom-right causal."""
    if attention_mask is None:
        return True
    if attention_mask.shape[-1] != k_len:
        return False
    check = getattr(_state, "mask_check", None)
    if check is None:
        check = _state.mask_check = CausalMaskCheck()
    return check(attention_mask, q_len, k_len)


def _check_no_position_bias(mask: Tensor | None) -> None:
    """Refuse an additive mask that carries a position bias (ALiBi: Falcon with ``alibi=True``, ...).

    The gate recomputes attention from the recorded queries and keys, so a bias hidden in the mask would be
    missing from M; only 0 / -inf (or boolean) masks are exact. Checked while recording, so a model is
    refused when the Attributor is built, before any work.
    """
    if mask is None or mask.dtype == torch.bool:
        return
    # Masked entries are -inf or the dtype's lowest value (transformers' eager masks); the rest must be equal.
    visible = mask[mask > torch.finfo(mask.dtype).min / 2]
    if visible.numel() and bool((visible != visible.reshape(-1)[0]).any()):
        raise UnsupportedModelError(
            "this model adds a position bias to its attention scores through the attention mask (ALiBi); "
            "heta_fast's gate recomputes attention from queries and keys and would miss it, so such models "
            "are not supported (for Falcon, use a rotary checkpoint: alibi=False)"
        )


def _check_causal(mask: Tensor | None, q_len: int, k_len: int) -> None:
    """Refuse masks that let a position see later positions (checked while recording, on the mask)."""
    if mask is None or q_len < 2:
        return
    future = ~causal_bool_mask(q_len, k_len, mask.device)
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
    core of :mod:`heta_fast.hf.attention_core`, with its hand-written double backward (on long inputs without
    recorded probabilities its query-blocked form, which never holds an n×n matrix), or, under soft-capping,
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
    rec = active_recorder()
    if rec is not None:
        _check_causal(mask, q_len, k_len)
        _check_no_position_bias(mask)
    keep_probs = rec is not None and rec.keep_probs
    needs_graph = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    only = getattr(_state, "last_query_layer", None)
    if only is not None and q_len > 1 and rec is None and getattr(module, "layer_idx", None) == only:
        # Only the last row is read (last_query_only): the other rows' attention is never computed.
        last, _ = heta_attention(module, query[..., -1:, :], key, value,
                                 None if attention_mask is None else attention_mask[..., -1:, :],
                                 scaling, dropout, softcap, sliding_window, **kwargs)
        return torch.cat([last.new_zeros(last.shape[0], q_len - 1, *last.shape[2:]), last], dim=1), None
    probs = None
    if softcap is None and not keep_probs and not needs_graph:
        k, v = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
        out = None
        if 1 < q_len < k_len and _plainly_causal(attention_mask, q_len, k_len):
            # A suffix behind a cached prefix (the KL pass): prefix + causal suffix, no mask (None off CPU).
            out = split_causal_attention(query, k, v, scaling)
        if out is None and mask is None:  # transformers dropped the mask because it is purely causal
            causal = q_len == k_len and q_len > 1
            bool_mask = None if causal or q_len == 1 else causal_bool_mask(q_len, k_len, query.device)
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=bool_mask, is_causal=causal, scale=scaling)
        elif out is None:
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask.to(query.dtype) if mask.dtype != torch.bool
                                                 else mask, scale=scaling)
        out = out.transpose(1, 2).contiguous()
    elif (softcap is None and not getattr(_state, "plain", False)
          and (mask is None or (mask.dtype == torch.bool and mask.shape[1] == 1))):
        # Graph or probabilities needed: the core with a hand-written double backward (attention_core.py);
        # without probabilities, long inputs take its query-blocked form, which returns probs=None.
        out, probs = attention_core(query, key, value, mask, scaling, probs=keep_probs)
        out = out.transpose(1, 2).contiguous()
    else:  # soft-capping, additive masks or plain_attention(): eager math, differentiated by autograd
        scores = torch.matmul(query, _repeat_kv(key, n_rep).transpose(-1, -2)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is None:
            mask = causal_bool_mask(q_len, k_len, query.device)
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


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPL, heta_attention)
    # SDPA-style masks: boolean, and None when purely causal (then no n×n mask is built at all).
    AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)
