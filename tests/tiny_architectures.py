"""Tiny random-weight models of every supported architecture, built with mlx-lm's own classes."""

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten

from services.models.model_writer import save_model_directory

NUM_LAYERS = 6
VOCAB_SIZE = 512

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

ARCHITECTURE_CONFIGS: dict[str, dict[str, object]] = {
    "llama": {**_COMMON, "model_type": "llama", "tie_word_embeddings": False},
    "qwen2": {**_COMMON, "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {**_COMMON, "model_type": "qwen3", "tie_word_embeddings": False, "head_dim": 16},
}


class _ArgumentsClass:
    from_dict: Callable[[dict[str, object]], object]


def build_tiny_model(model_type: str, destination: Path, seed: int = 7) -> Path:
    """Saves a tiny model of `model_type` in strata's layered layout and returns its folder."""
    config = ARCHITECTURE_CONFIGS[model_type]
    module = importlib.import_module(f"mlx_lm.models.{model_type}")
    arguments = cast(_ArgumentsClass, module.ModelArgs).from_dict(config)
    mx.random.seed(seed)
    model = cast(Callable[[object], nn.Module], module.Model)(arguments)
    # Scale weights up so that logits are far from uniform and greedy choices are not ties.
    weights = {name: array * 4 if array.ndim == 2 else array for name, array in tree_flatten(model.parameters())}
    save_model_directory(destination, config, weights)
    return destination


def build_tiny_half_model(model_type: str, scratch: Path, destination: Path) -> Path:
    """Like `build_tiny_model`, with every weight a float16 value written as float32 (as the embedded
    model's weights are once dequantized from 4-bit): shards hold such weights in float16."""
    build_tiny_model(model_type, scratch)
    rounded: dict[str, mx.array] = {}
    for path in scratch.rglob("*.safetensors"):
        weights = mx.load(str(path))
        if not isinstance(weights, dict):
            raise TypeError(f"{path} is not a safetensors file")
        rounded.update({name: array.astype(mx.float16).astype(mx.float32) for name, array in weights.items()})
    save_model_directory(destination, ARCHITECTURE_CONFIGS[model_type], rounded)
    return destination
