from typing import Literal

import mlx.core as mx

from .cache import KVCache, RotatingKVCache

def create_attention_mask(
    h: mx.array,
    cache: KVCache | RotatingKVCache | None = None,
    window_size: int | None = None,
    return_array: bool = False,
) -> mx.array | Literal["causal"] | None: ...
def scaled_dot_product_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    cache: KVCache | RotatingKVCache | None,
    scale: float,
    mask: mx.array | Literal["causal"] | None,
    sinks: mx.array | None = None,
) -> mx.array: ...
