"""Prompt prefixes whose KV cache later requests reuse (a conversation's next turn, a shared system prompt).

Exact by construction: only full prompt chunks ending on a chunk boundary are kept, and a request
reuses a prefix only up to a boundary it would itself have reached with the same chunks, so the
stored keys and values are bitwise the ones it would compute. Generated tokens are never reused
(one-token decode steps and chunked prefill give different bits in float32).

Every shard stores the prefix for its own layers; the first shard alone decides what is kept (an
LRU bounded in bytes) and tells the others to store or forget, so all shards agree. Only models whose
every layer caches the whole context keep prefixes (a sliding window's rotating cache has dropped
and reordered positions; see `prefixes_reusable`).
"""

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from services.models.model_config import ModelConfig
from services.platform.mlx_typing import evaluate
from shard_server.layer_kinds import StageCache

DEFAULT_PREFIX_CACHE_BYTES = 256 * 1024 * 1024


def prefixes_reusable(config: ModelConfig) -> bool:
    """Whether every layer of the model (on every shard) caches every position, as stored prefixes need."""
    return all(kind == "full" for kind in config.layer_attention)


def prefix_key(tokens: Sequence[int]) -> str:
    return hashlib.sha256(array("i", tokens).tobytes()).hexdigest()[:32]


@dataclass(frozen=True)
class _StoredPrefix:
    layers: tuple[tuple[mx.array, mx.array], ...]
    length: int
    nbytes: int


class PrefixStore:
    """This shard's copies of stored prefixes, for its own layers."""

    def __init__(self) -> None:
        self._stored: dict[str, _StoredPrefix] = {}

    @property
    def nbytes(self) -> int:
        return sum(prefix.nbytes for prefix in self._stored.values())

    def put(self, key: str, caches: Sequence[StageCache], length: int) -> int:
        """Keeps positions [0, length) of the caches; returns the bytes held."""
        layers: list[tuple[mx.array, mx.array]] = []
        for cache in caches:
            if cache.keys is None or cache.values is None or cache.offset < length:
                raise ValueError(f"cannot store a prefix of {length} positions from a cache at {cache.offset}")
            layers.append((mx.array(cache.keys[..., :length, :]), mx.array(cache.values[..., :length, :])))
        evaluate(layers)
        nbytes = sum(keys.nbytes + values.nbytes for keys, values in layers)
        self._stored[key] = _StoredPrefix(tuple(layers), length, nbytes)
        return nbytes

    def restore(self, key: str) -> list[StageCache] | None:
        """Fresh caches positioned after the prefix, or None when it is not stored here."""
        stored = self._stored.get(key)
        if stored is None:
            return None
        caches: list[StageCache] = []
        for keys, values in stored.layers:
            cache = KVCache()
            cache.keys, cache.values, cache.offset = keys, values, stored.length
            caches.append(cache)
        return caches

    def drop(self, key: str) -> None:
        self._stored.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._stored


class PrefixDirectory:
    """First shard: which prefixes the ring keeps, least recently used first, within a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self._budget_bytes = budget_bytes
        self._entries: OrderedDict[str, int] = OrderedDict()

    def longest_reusable(self, prompt: Sequence[int], step: int) -> tuple[str, int] | None:
        """The longest stored prefix on a chunk boundary that leaves at least the last token to run."""
        boundary = ((len(prompt) - 1) // step) * step
        while boundary > 0:
            key = prefix_key(prompt[:boundary])
            if key in self._entries:
                self._entries.move_to_end(key)
                return key, boundary
            boundary -= step
        return None

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def record(self, key: str, nbytes: int) -> list[str]:
        """Adds a stored prefix; returns the keys evicted to stay within the budget."""
        self._entries[key] = nbytes
        self._entries.move_to_end(key)
        evicted: list[str] = []
        while sum(self._entries.values()) > self._budget_bytes and len(self._entries) > 1:
            old, _ = self._entries.popitem(last=False)
            evicted.append(old)
        if sum(self._entries.values()) > self._budget_bytes:
            self._entries.pop(key)
            evicted.append(key)
        return evicted
