"""Helpers for heta_fast's tests and for users checking their own fast paths (like ``torch.testing``)."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys

import torch

from .models import TINY_ARCHS, tiny_model
from .tokenizers import CharTokenizer

__all__ = [
    "TINY_ARCHS",
    "CharTokenizer",
    "NoBosTokenizer",
    "causal_allowed",
    "frozen_float64",
    "hf_char_tokenizer",
    "hf_eager_run",
    "live_memory_child",
    "random_ids",
    "rel_err",
    "tiny_model",
    "torch_threads",
]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads (tests on a shared machine; bit-identical float32 results across
    processes that each use one thread), restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rel_err(a, b, floor: float = 1e-12) -> float:
    """``max|a - b| / max|b|``: the error relative to the scale of the reference vector ``b``."""
    a = torch.as_tensor(a, dtype=torch.float64).detach()
    b = torch.as_tensor(b, dtype=torch.float64).detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


def live_memory_child(code: str, *args, timeout: float = 600) -> str:
    """Run ``python -c code *args`` in a fresh process and return the last line it prints.

    Its malloc maps every block above 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed memory goes back to the
    system and peak resident memory measures live tensors, not the heap's high-water mark; one OpenMP thread.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if out.returncode != 0:
        raise AssertionError(f"the measuring child failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def causal_allowed(q_len: int, k_len: int, window: int | None = None) -> torch.Tensor:
    """``[q_len, k_len]`` True where query row j (absolute position k_len − q_len + j) may attend to key i:
    causal from the bottom right (a suffix behind a cached prefix), within ``window`` positions if given."""
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]
    k_pos = torch.arange(k_len)[None, :]
    ok = k_pos <= q_pos
    if window is not None:
        ok &= k_pos > q_pos - window
    return ok


def random_ids(n: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    """``n`` reproducible random token ids below ``vocab``."""
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


class NoBosTokenizer(CharTokenizer):
    """Like SmolLM2's tokenizer: adds no BOS to text, but has an ``<|endoftext|>`` token (id 89), which the
    default ``sink_token="auto"`` prepends as the attention sink."""

    def get_vocab(self) -> dict[str, int]:
        return {"<|endoftext|>": 89}

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return super().__call__(text, add_special_tokens=False, return_offsets_mapping=return_offsets_mapping)

def frozen_float64(arch: str, **kw):
    """A tiny random-weight model of ``arch`` in float64 with every parameter frozen (the oracles' model)."""
    model = tiny_model(arch, **kw).double()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def hf_eager_run(model, X, *, hidden_states=False):
    """The model's own eager attention (not heta_fast's), with attention maps; X before embedding scale."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    scale = float(getattr(eager.get_input_embeddings(), "embed_scale", 1.0))
    values = {}

    def hook_for(layer_idx, kind):
        def hook(_mod, _inp, out):
            values[layer_idx] = (kind, out[0].detach())

        return hook

    cfg = eager.config
    attn_mods = [m for n, m in eager.named_modules() if n.endswith(("self_attn", ".attn")) and hasattr(m, "layer_idx")]
    for attn in attn_mods:
        for name in ("v_proj", "qkv_proj", "c_attn"):
            if hasattr(attn, name):
                getattr(attn, name).register_forward_hook(hook_for(attn.layer_idx, name))
                break
    out = eager(inputs_embeds=(X * scale)[None], output_attentions=True, output_hidden_states=hidden_states)
    H = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", None) or H
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    vals = []
    for layer in range(len(attn_mods)):
        kind, y = values[layer]
        if kind == "qkv_proj":
            y = y[:, (H + Hkv) * dh : (H + 2 * Hkv) * dh]
        elif kind == "c_attn":
            y = y[:, 2 * H * dh :]
        vals.append(y.reshape(y.shape[0], Hkv, dh).transpose(0, 1))  # [Hkv, n, dh]
    return out, vals, attn_mods


HF_CHARS = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?'"


def hf_char_tokenizer(add_bos: bool = True):
    """A real HuggingFace fast tokenizer, one token per character of :data:`HF_CHARS` (ids < 97, the tiny
    models' vocabulary), for code that needs a ``PreTrainedTokenizerFast`` (Inseq, ContextCite's collator)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "<pad>": 3}
    for c in HF_CHARS:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()  # decode to the text itself (WordLevel would join tokens with spaces)
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
