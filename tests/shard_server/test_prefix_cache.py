"""The prefix directory's rules: chunk boundaries only, the last prompt token always runs, LRU in bytes."""

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from shard_server.prefix_cache import PrefixDirectory, PrefixStore, prefix_key

pytestmark = pytest.mark.unit

PROMPT = list(range(100, 120))  # 20 tokens


def test_longest_reusable_prefix_is_on_a_chunk_boundary_and_leaves_the_last_token() -> None:
    directory = PrefixDirectory(budget_bytes=1000)
    for length in (4, 8, 16, 20):
        directory.record(prefix_key(PROMPT[:length]), 10)
    # 20 tokens: the last must run, so 16 is the longest boundary usable (20 itself is not).
    assert directory.longest_reusable(PROMPT, step=4) == (prefix_key(PROMPT[:16]), 16)
    assert directory.longest_reusable(PROMPT[:9], step=4) == (prefix_key(PROMPT[:8]), 8)
    assert directory.longest_reusable(PROMPT[:4], step=4) is None


def test_a_different_prompt_does_not_match() -> None:
    directory = PrefixDirectory(budget_bytes=1000)
    directory.record(prefix_key(PROMPT[:8]), 10)
    assert directory.longest_reusable([1, *PROMPT[1:]], step=4) is None


def test_least_recently_used_prefixes_are_evicted_first() -> None:
    directory = PrefixDirectory(budget_bytes=30)
    keys = [prefix_key(PROMPT[:length]) for length in (4, 8, 12)]
    assert directory.record(keys[0], 10) == []
    assert directory.record(keys[1], 10) == []
    directory.longest_reusable(PROMPT[:5], step=4)  # touches keys[0]
    assert directory.record(keys[2], 15) == [keys[1]]
    assert keys[0] in directory
    assert keys[1] not in directory


def test_a_prefix_larger_than_the_budget_is_not_kept() -> None:
    directory = PrefixDirectory(budget_bytes=5)
    key = prefix_key(PROMPT[:4])
    assert directory.record(key, 50) == [key]
    assert key not in directory


def test_store_restores_caches_positioned_after_the_prefix() -> None:
    cache = KVCache()
    keys = mx.reshape(mx.arange(2 * 3 * 6 * 4, dtype=mx.float32), (2, 3, 6, 4))
    cache.update_and_fetch(keys, keys + 1)
    store = PrefixStore()
    held = store.put("k", [cache], 4)
    assert held == 2 * (2 * 3 * 4 * 4 * 4)
    restored = store.restore("k")
    assert restored is not None
    assert restored[0].offset == 4
    assert restored[0].keys is not None
    assert mx.array_equal(restored[0].keys, keys[..., :4, :]).item()
    store.drop("k")
    assert store.restore("k") is None
