# Minimal typing for mlx-lm's llama model; declare only what is used.
from dataclasses import dataclass

import mlx.core as mx
from mlx import nn

from .cache import KVCache

@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    rms_norm_eps: float
    vocab_size: int
    head_dim: int | None = None
    max_position_embeddings: int | None = None
    num_key_value_heads: int | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000
    rope_traditional: bool = False
    tie_word_embeddings: bool = True

class Model(nn.Module):
    args: ModelArgs
    def __init__(self, args: ModelArgs) -> None: ...
    def __call__(
        self, inputs: mx.array, cache: list[KVCache] | None = None, input_embeddings: mx.array | None = None
    ) -> mx.array: ...
