"""The native batched attention gives MLX's own attention results bitwise, or is not used."""

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.cache import KVCache

from services.kernel.ids import ModelId
from services.models.model_store import ModelStore
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


class _Step:
    """Requests primed to their contexts, one step's new rows, and MLX's own attention for them."""

    def __init__(
        self, cases: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int, dtype: mx.Dtype = mx.float32
    ) -> None:
        self.caches: list[KVCache] = []
        self.reference_caches: list[KVCache] = []
        self.starts: list[int] = []
        self.lengths = [length for length, _ in cases]
        queries: list[mx.array] = []
        new_keys: list[mx.array] = []
        new_values: list[mx.array] = []
        references: list[mx.array] = []
        start = 0
        for index, (length, context) in enumerate(cases):
            cache, reference_cache = KVCache(), KVCache()
            if context:
                primed = mx.random.normal((1, kv_heads, context, head_dim), key=mx.random.key(index)).astype(dtype)
                cache.update_and_fetch(primed, primed * 0.5)
                reference_cache.update_and_fetch(primed, primed * 0.5)
            query = mx.random.normal((1, heads, length, head_dim), key=mx.random.key(100 + index)).astype(dtype)
            keys = mx.random.normal((1, kv_heads, length, head_dim), key=mx.random.key(200 + index)).astype(dtype)
            values = mx.random.normal((1, kv_heads, length, head_dim), key=mx.random.key(300 + index)).astype(dtype)
            mask = create_attention_mask(mx.zeros((1, length, 8)), reference_cache)
            all_keys, all_values = reference_cache.update_and_fetch(keys, values)
            reference = scaled_dot_product_attention(
                query, all_keys, all_values, cache=reference_cache, scale=head_dim**-0.5, mask=mask
            )
            references.append(mx.reshape(mx.transpose(reference, (0, 2, 1, 3)), (length, heads * head_dim)))
            # The batch lays every row out as its own entry: (rows, heads, 1, head_dim).
            queries.append(mx.transpose(query, (2, 1, 0, 3)))
            new_keys.append(mx.transpose(keys, (2, 1, 0, 3)))
            new_values.append(mx.transpose(values, (2, 1, 0, 3)))
            self.caches.append(cache)
            self.reference_caches.append(reference_cache)
            self.starts.append(start)
            start += length
        self.queries = mx.concatenate(queries, axis=0)
        self.new_keys = mx.concatenate(new_keys, axis=0)
        self.new_values = mx.concatenate(new_values, axis=0)
        self.reference = mx.concatenate(references)

    def attend(self, native: NativeAttention, head_dim: int) -> mx.array | None:
        return native.attend(
            self.queries, self.new_keys, self.new_values, self.caches, self.starts, self.lengths, head_dim**-0.5
        )


@pytest.mark.native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (4, 4, 16), (8, 2, 128)])
def test_native_attention_equals_mlx_attention_bitwise(
    heads: int, kv_heads: int, head_dim: int, grouped: bool, threads: int
) -> None:
    native = _require_native()
    native.threads = threads  # requests shared among threads: the same arithmetic each
    # Decode rows over short, long and past-one-cache-block contexts (some caches grow, some take
    # the rows in place); prefill chunks from 0 and after a context (causal mask).
    cases = [(1, 5), (1, 100), (1, 255), (1, 256), (1, 700), (3, 0), (7, 40), (1, 0), (64, 0), (50, 400), (1, 1023)]
    step = _Step(cases, heads, kv_heads, head_dim)
    attended = step.attend(native.grouped() if grouped else native, head_dim)
    assert attended is not None
    assert attended.shape == (1, sum(step.lengths), heads * head_dim)
    if grouped and not mx.array_equal(attended[0], step.reference).item():
        # This BLAS's row results depend on the row count, so a stage's load check declines grouped
        # heads here and keeps MLX's per-head call shapes: those must then be exact.
        step = _Step(cases, heads, kv_heads, head_dim)
        attended = step.attend(native, head_dim)
        assert attended is not None
    assert mx.array_equal(attended[0], step.reference).item()
    # The caches were updated exactly as mlx-lm's KVCache updates them.
    for cache, reference_cache in zip(step.caches, step.reference_caches, strict=True):
        assert cache.offset == reference_cache.offset
        assert cache.keys is not None and cache.values is not None
        assert reference_cache.keys is not None and reference_cache.values is not None
        offset = cache.offset
        assert mx.array_equal(cache.keys[..., :offset, :], reference_cache.keys[..., :offset, :]).item()
        assert mx.array_equal(cache.values[..., :offset, :], reference_cache.values[..., :offset, :]).item()


@pytest.mark.native
def test_layouts_it_does_not_read_are_declined_without_touching_the_caches() -> None:
    native = _require_native()
    step = _Step([(1, 5), (2, 3)], 4, 2, 16, dtype=mx.float16)
    offsets = [cache.offset for cache in step.caches]
    assert step.attend(native, 16) is None
    assert [cache.offset for cache in step.caches] == offsets


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ModelStore(tmp_path_factory.mktemp("models"))
    return build_tiny_model("llama", store.model_dir(ModelId("tiny-llama")))


@pytest.mark.native
def test_a_float32_stage_uses_it_and_batches_stay_exact(tiny_llama: Path) -> None:
    _require_native()
    stage = ModelStage(tiny_llama, StageRange(0, NUM_LAYERS, NUM_LAYERS), "float32")
    assert stage.check_batching(40, threads=2)
    assert stage.native_attention is not None
    assert stage.native_attention.threads == 2
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


@pytest.mark.process
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
