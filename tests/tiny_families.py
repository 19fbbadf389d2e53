"""Tiny random-weight models of every family strata splits, built with mlx-lm's own classes.

Each config is what the family's config.json looks like (its own `model_type`, its own keys), at a
few layers and a small hidden size; the class that builds it is the one mlx-lm's loader picks
(`FAMILY_MODULES`, which follows mlx-lm's remapping: mistral is built by llama's classes). Variants
cover what a family's real checkpoints differ in: llama 3's rope scaling, Ministral-style sliding
layers, gemma3's wrapper with a nested text config and tied embeddings, MoE layers beside dense ones.
"""

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten

from services.models.model_families import FAMILY_MODULES
from services.models.model_writer import save_model_directory

NUM_LAYERS = 6
VOCAB_SIZE = 512
WINDOW = 8
"""Sliding layers attend to this many tokens: less than the prompts and generations of the tests."""

_COMMON: dict[str, object] = {
    "hidden_size": 64,
    "num_hidden_layers": NUM_LAYERS,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": VOCAB_SIZE,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
}

_GEMMA3_TEXT: dict[str, object] = {
    **_COMMON,
    "model_type": "gemma3_text",
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": WINDOW,
    "sliding_window_pattern": 3,
    "rope_local_base_freq": 10000.0,
}

FAMILY_CONFIGS: dict[str, dict[str, object]] = {
    "llama": {
        **_COMMON,
        "model_type": "llama",
        "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    "llama-sliding": {
        **_COMMON,
        "model_type": "llama",
        "tie_word_embeddings": True,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
        "sliding_window": WINDOW,
    },
    # A bare sliding_window, as Mistral 7B's config has: mlx-lm's llama ignores it.
    "mistral": {**_COMMON, "model_type": "mistral", "tie_word_embeddings": False, "sliding_window": 4096},
    "qwen2": {**_COMMON, "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {**_COMMON, "model_type": "qwen3", "tie_word_embeddings": False, "head_dim": 16},
    "qwen3_moe": {
        **_COMMON,
        "model_type": "qwen3_moe",
        "head_dim": 16,
        "tie_word_embeddings": False,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [0],
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
    },
    "gemma2": {
        **_COMMON,
        "model_type": "gemma2",
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": WINDOW,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    "gemma3_text": _GEMMA3_TEXT,
    "gemma3": {"model_type": "gemma3", "vocab_size": VOCAB_SIZE, "text_config": _GEMMA3_TEXT},
    "phi3": {**_COMMON, "model_type": "phi3", "tie_word_embeddings": False},
    "granite": {
        **_COMMON,
        "model_type": "granite",
        "logits_scaling": 4.0,
        "attention_multiplier": 0.25,
        "embedding_multiplier": 6.0,
        "residual_multiplier": 0.5,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
    },
    "olmo2": {**_COMMON, "model_type": "olmo2", "tie_word_embeddings": False},
    "glm4": {
        **_COMMON,
        "model_type": "glm4",
        "head_dim": 16,
        "attention_bias": True,
        "partial_rotary_factor": 0.5,
        "tie_word_embeddings": False,
    },
    # No layer_types: mlx-lm's gpt_oss alternates sliding and full layers.
    "gpt_oss": {
        **_COMMON,
        "model_type": "gpt_oss",
        "intermediate_size": 32,
        "head_dim": 16,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "sliding_window": WINDOW,
        "tie_word_embeddings": False,
    },
    "deepseek_v3": {
        **_COMMON,
        "model_type": "deepseek_v3",
        "num_key_value_heads": 4,
        "moe_intermediate_size": 32,
        "n_shared_experts": 1,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 2,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 32,
        "q_lora_rank": 48,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "tie_word_embeddings": False,
    },
}
"""Case name -> config.json."""

_DROPPED_WEIGHTS = {"gemma3": "language_model.lm_head.weight"}
"""Checkpoints whose head is tied by having no lm_head weights (gemma3's rule in mlx-lm)."""


class _ArgumentsClass:
    from_dict: Callable[[dict[str, object]], object]


def build_family_model(case: str, destination: Path, seed: int = 7) -> Path:
    """Saves the tiny model of `case` (a key of `FAMILY_CONFIGS`) in strata's layout; returns its folder."""
    config = FAMILY_CONFIGS[case]
    module = importlib.import_module(f"mlx_lm.models.{FAMILY_MODULES[cast(str, config['model_type'])]}")
    # ModelArgs may change nested dicts (gemma3's text config): give it a copy.
    arguments = cast(_ArgumentsClass, module.ModelArgs).from_dict(_deep_copy(config))
    mx.random.seed(seed)
    model = cast(Callable[[object], nn.Module], module.Model)(arguments)
    dropped = _DROPPED_WEIGHTS.get(case)
    # Scale matrices up so that logits are far from uniform and greedy choices are not ties.
    weights = {
        name: array * 4 if array.ndim == 2 and "embed_tokens" not in name else array
        for name, array in tree_flatten(model.parameters())
        if name != dropped
    }
    save_model_directory(destination, config, weights)
    return destination


def _deep_copy(config: dict[str, object]) -> dict[str, object]:
    return {
        key: _deep_copy(cast(dict[str, object], value)) if isinstance(value, dict) else value
        for key, value in config.items()
    }
