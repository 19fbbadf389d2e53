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
    @classmethod
    def from_dict(cls, params: dict[str, object]) -> ModelArgs: ...

class Model(nn.Module):
    args: ModelArgs
    def __init__(self, args: ModelArgs) -> None: ...
    def __call__(
        self, inputs: mx.array, cache: list[KVCache] | None = None, input_embeddings: mx.array | None = None
    ) -> mx.array: ...

class Attention(nn.Module):
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scale: float
    def __init__(self, args: ModelArgs) -> None: ...
    def __call__(self, x: mx.array, mask: mx.array | str | None = None, cache: object | None = None) -> mx.array: ...

class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None: ...
    def __call__(self, x: mx.array) -> mx.array: ...

class TransformerBlock(nn.Module):
    use_sliding: bool
    self_attn: Attention
    mlp: MLP
    input_layernorm: nn.RMSNorm
    post_attention_layernorm: nn.RMSNorm
    def __init__(self, args: ModelArgs, use_sliding: bool = False) -> None: ...
    def __call__(self, x: mx.array, mask: mx.array | str | None = None, cache: object | None = None) -> mx.array: ...
