"""HuggingFace glue: every causal LM seen the same way (:class:`ModelAdapter`), through heta_fast's recording
attention (:mod:`.attention`), with KV-cache helpers (:mod:`.cache`) and the LM head formula (:mod:`.head`).

This is the only package that knows about transformers' internals; the HETA components above it talk to a
:class:`ModelAdapter`.
"""

from .adapter import ModelAdapter
from .attention import ATTN_IMPL, LayerRecord, Recorder, heta_attention, plain_attention
from .cache import cache_kwargs, cut_cache, new_full_cache
from .clean_run import CleanRun, clean_forward
from .head import head_check_tolerance, head_logits

__all__ = [
    "ATTN_IMPL",
    "CleanRun",
    "LayerRecord",
    "ModelAdapter",
    "Recorder",
    "cache_kwargs",
    "clean_forward",
    "cut_cache",
    "head_check_tolerance",
    "head_logits",
    "heta_attention",
    "new_full_cache",
    "plain_attention",
]
