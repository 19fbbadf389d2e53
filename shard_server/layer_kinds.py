"""How each layer of a stage attends and caches, taken from the model's own `make_cache` and `__call__`.

mlx-lm's models build one attention mask per layer kind in their `__call__`, from a cache of that
kind, before the layers run (all caches of one kind are then at the same position): a full layer's
from its `KVCache`, a sliding layer's from its `RotatingKVCache` with the window, and some families
(gemma2, deepseek_v3) ask for an array mask even where "causal" would do. A stage builds the same
mask per layer from the layer's own cache before running it, which is the same mask.
"""

from dataclasses import dataclass
from typing import Literal

import mlx.core as mx
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache, RotatingKVCache

StageCache = KVCache | RotatingKVCache
"""The caches a stage's layers keep: the whole context, or a rotating window of it."""

AttentionMask = mx.array | Literal["causal"] | None


class UnsupportedCacheError(ValueError):
    """The model's `make_cache` gives a cache kind strata's stages do not keep (quantized, SSM, ...)."""


@dataclass(frozen=True)
class LayerKind:
    """How one layer attends and what it caches."""

    window: int | None = None
    """Tokens a sliding layer attends to (its `RotatingKVCache` size); None: the whole context."""
    keep: int = 0
    """Tokens a rotating cache never drops (mlx-lm's `keep`)."""
    array_mask: bool = False
    """The family asks `create_attention_mask` for an array even where "causal" would do."""

    def new_cache(self) -> StageCache:
        return KVCache() if self.window is None else RotatingKVCache(max_size=self.window, keep=self.keep)

    def mask(self, hidden: mx.array, cache: StageCache) -> AttentionMask:
        """The mask the model's own forward pass gives this layer for `hidden` (1, rows, hidden)."""
        return create_attention_mask(hidden, cache, window_size=self.window, return_array=self.array_mask)

    def describe(self) -> str:
        return "full attention" if self.window is None else f"sliding window of {self.window}"


FULL_ATTENTION = LayerKind()


def layer_kind_of(cache: object, array_mask: bool) -> LayerKind:
    """The kind of a layer whose model's `make_cache` gave `cache` (a fresh one)."""
    # Exact types: subclasses (quantized, chunked, batched caches) keep their rows differently.
    if type(cache) is KVCache:
        return LayerKind(array_mask=array_mask)
    if type(cache) is RotatingKVCache:
        return LayerKind(window=cache.max_size, keep=cache.keep, array_mask=array_mask)
    raise UnsupportedCacheError(f"the model caches a layer in a {type(cache).__name__}, which stages do not keep")
