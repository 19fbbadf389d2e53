from typing import Literal

import mlx.core as mx

from .cache import KVCache

def create_attention_mask(
    h: mx.array, cache: KVCache | None = None, window_size: int | None = None, return_array: bool = False
) -> mx.array | Literal["causal"] | None: ...
