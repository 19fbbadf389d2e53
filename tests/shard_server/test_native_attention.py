"""The native batched attention gives MLX's own attention results bitwise, or is not used."""

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.cache import KVCache

from services.ids import ModelId
from services.model_store import ModelStore
from shard_server.batched_forward import RequestRows
from shard_server.model_stage import ModelStage, StageRange
from shard_server.native_attention import (
    NativeAttention,
    NativeAttentionUnavailableError,
    build_library,
    load_native_attention,
)
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model


def _require_native() -> NativeAttention:
    native = load_native_attention()
    if native is None:
        message = "the native attention library is not built or the fast BLAS is not preloaded"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: this test must run)")
        pytest.skip(message)
    return native


def _requests(
    cases: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int, dtype: mx.Dtype = mx.float32
) -> tuple[mx.array, list[KVCache], list[int], list[int], mx.array]:
    """Caches primed to each context, their new rows appended; queries and MLX's own attention."""
    caches: list[KVCache] = []
    queries: list[mx.array] = []
    references: list[mx.array] = []
    starts: list[int] = []
    start = 0
    for index, (length, context) in enumerate(cases):
        cache = KVCache()
        if context:
            primed = mx.random.normal((1, kv_heads, context, head_dim), key=mx.random.key(index)).astype(dtype)
            cache.update_and_fetch(primed, primed * 0.5)
        query = mx.random.normal((1, heads, length, head_dim), key=mx.random.key(100 + index)).astype(dtype)
        new_keys = mx.random.normal((1, kv_heads, length, head_dim), key=mx.random.key(200 + index)).astype(dtype)
        new_values = mx.random.normal((1, kv_heads, length, head_dim), key=mx.random.key(300 + index)).astype(dtype)
        mask = create_attention_mask(mx.zeros((1, length, 8)), cache)
        keys, values = cache.update_and_fetch(new_keys, new_values)
        reference = scaled_dot_product_attention(query, keys, values, cache=cache, scale=head_dim**-0.5, mask=mask)
        references.append(mx.reshape(mx.transpose(reference, (0, 2, 1, 3)), (length, heads * head_dim)))
        queries.append(mx.transpose(query, (2, 1, 0, 3)))
        caches.append(cache)
        starts.append(start)
        start += length
    return mx.concatenate(queries, axis=0), caches, starts, [length for length, _ in cases], mx.concatenate(references)


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (4, 4, 16), (8, 2, 128)])
def test_native_attention_equals_mlx_attention_bitwise(heads: int, kv_heads: int, head_dim: int) -> None:
    native = _require_native()
    # Decode rows over short, long and past-one-cache-block contexts; prefill chunks from 0 and
    # after a context (causal mask).
    cases = [(1, 5), (1, 100), (1, 300), (1, 700), (3, 0), (7, 40), (1, 0), (64, 0), (50, 400), (1, 1023)]
    queries, caches, starts, lengths, reference = _requests(cases, heads, kv_heads, head_dim)
    attended = native.attend(queries, caches, starts, lengths, heads, kv_heads, head_dim**-0.5)
    assert attended is not None
    assert attended.shape == (1, sum(lengths), heads * head_dim)
    assert mx.array_equal(attended[0], reference).item()


def test_layouts_it_does_not_read_are_declined() -> None:
    native = _require_native()
    queries, caches, starts, lengths, _ = _requests([(1, 5), (2, 3)], 4, 2, 16, dtype=mx.float16)
    assert native.attend(queries, caches, starts, lengths, 4, 2, 0.25) is None
    empty = KVCache()
    assert native.attend(queries[:1], [empty], [0], [1], 4, 2, 0.25) is None


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ModelStore(tmp_path_factory.mktemp("models"))
    return build_tiny_model("llama", store.model_dir(ModelId("tiny-llama")))


def test_a_float32_stage_uses_it_and_batches_stay_exact(tiny_llama: Path) -> None:
    _require_native()
    stage = ModelStage(tiny_llama, StageRange(0, NUM_LAYERS, NUM_LAYERS), "float32")
    assert stage.check_batching(40)
    assert stage.native_attention is not None
    prompts = [[3, 5, 7, 11], [13], [17, 19, 23, 29, 31, 37], [41, 43]]
    outputs: list[mx.array] = []
    for native in (stage.native_attention, None):
        stage.native_attention = native
        caches = [stage.make_cache() for _ in prompts]
        requests: list[RequestRows] = []
        start = 0
        for prompt, cache in zip(prompts, caches, strict=True):
            requests.append(RequestRows(cache, start, len(prompt)))
            start += len(prompt)
        tokens = mx.array([token for prompt in prompts for token in prompt])[None]
        prefill = stage.logits(stage.run_layers(stage.embed(tokens), requests))
        decode_requests = [RequestRows(cache, index, 1) for index, cache in enumerate(caches)]
        decode = stage.logits(stage.run_layers(stage.embed(mx.array([7] * len(prompts))[None]), decode_requests))
        outputs.append(mx.concatenate([prefill, decode], axis=1))
    assert mx.array_equal(outputs[0], outputs[1]).item()


def test_a_missing_compiler_is_a_clear_error_and_not_a_failed_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "no-such-compiler")
    monkeypatch.setenv("CXX", missing)
    with pytest.raises(NativeAttentionUnavailableError, match="no-such-compiler"):
        build_library(tmp_path / "libstrata_attention.so")
    assert not (tmp_path / "libstrata_attention.so").exists()
    result = subprocess.run(
        [sys.executable, "-m", "shard_server.native_attention", "build"],
        env={**os.environ, "CXX": missing},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0
    assert "shards will run attention through MLX ops" in result.stderr
