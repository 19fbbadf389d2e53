"""Tiny random-weight llama models for model-file tests: milliseconds to build, real mlx-lm classes."""

import dataclasses

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs

from services.platform.mlx_typing import quantize_module

NUM_LAYERS = 4
HIDDEN_SIZE = 64
VOCAB_SIZE = 256
INTERMEDIATE_SIZE = 128
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS

# Quantized variant: 4-bit groups of 32 by default, the embedding 8-bit in groups of 64, so a
# manifest that ignored the per-module override would miscount the embedding by a factor of two.
QUANTIZATION: dict[str, object] = {
    "group_size": 32,
    "bits": 4,
    "model.embed_tokens": {"group_size": 64, "bits": 8},
}

EMBED_PARAMETERS = VOCAB_SIZE * HIDDEN_SIZE
LAYER_PARAMETERS = (
    2 * HIDDEN_SIZE * NUM_HEADS * HEAD_DIM  # q_proj, o_proj
    + 2 * HIDDEN_SIZE * NUM_KV_HEADS * HEAD_DIM  # k_proj, v_proj
    + 3 * HIDDEN_SIZE * INTERMEDIATE_SIZE  # gate, up, down
    + 2 * HIDDEN_SIZE  # the two RMS norms
)


def head_parameters(*, tied: bool) -> int:
    return HIDDEN_SIZE + (0 if tied else VOCAB_SIZE * HIDDEN_SIZE)


def tiny_llama(
    *, tied: bool = True, quantized: bool = False, rope_traditional: bool = False, seed: int = 0
) -> tuple[Model, dict[str, object]]:
    """A tiny llama model with random weights and the config.json that describes it."""
    args = ModelArgs(
        model_type="llama",
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        intermediate_size=INTERMEDIATE_SIZE,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        rms_norm_eps=1e-5,
        vocab_size=VOCAB_SIZE,
        tie_word_embeddings=tied,
        rope_traditional=rope_traditional,
    )
    mx.random.seed(seed)
    model = Model(args)
    config: dict[str, object] = dataclasses.asdict(args)
    if quantized:
        quantize_module(model, group_size=32, bits=4, class_predicate=_quantization_predicate)
        config["quantization"] = QUANTIZATION
    return model, config


def model_weights(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.parameters()))


def _quantization_predicate(path: str, module: nn.Module) -> bool | dict[str, int]:
    if path == "model.embed_tokens":
        return {"group_size": 64, "bits": 8}
    return isinstance(module, nn.Linear | nn.Embedding)
