"""Batched rows of several requests give each request exactly what it computes alone (in process)."""

from pathlib import Path

import mlx.core as mx
import pytest

from services.kernel.ids import ModelId
from services.models.model_store import ModelStore
from shard_server.batched_forward import LayerPlan, RequestRows, check_batch_invariance, forward_rows, is_batchable
from shard_server.model_stage import ModelStage, StageRange
from tests.tiny_architectures import ARCHITECTURE_CONFIGS, NUM_LAYERS, build_tiny_model

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    store = ModelStore(tmp_path_factory.mktemp("models"))
    return {
        model_type: build_tiny_model(model_type, store.model_dir(ModelId(f"tiny-{model_type}")))
        for model_type in ARCHITECTURE_CONFIGS
    }


def _run(stage: ModelStage, prompts: list[list[int]], batched: bool) -> list[mx.array]:
    """Prefills every prompt in one batch, then one decode row each; returns each request's logits."""
    caches = [stage.make_cache() for _ in prompts]
    tokens = [token for prompt in prompts for token in prompt]
    requests: list[RequestRows] = []
    start = 0
    for prompt, cache in zip(prompts, caches, strict=True):
        requests.append(RequestRows(cache, start, len(prompt)))
        start += len(prompt)
    stage.batch_invariant = batched
    hidden = stage.run_layers(stage.embed(mx.array(tokens)[None]), requests)
    decode_requests = [RequestRows(cache, index, 1) for index, cache in enumerate(caches)]
    decode_hidden = stage.run_layers(stage.embed(mx.array([7] * len(prompts))[None]), decode_requests)
    return [stage.logits(hidden), stage.logits(decode_hidden)]


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURE_CONFIGS))
def test_batched_and_alone_modes_agree_bitwise(tiny_models: dict[str, Path], model_type: str) -> None:
    stage = ModelStage(tiny_models[model_type], StageRange(0, NUM_LAYERS, NUM_LAYERS))
    assert all(is_batchable(layer) for layer in stage.layers)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]
    batched = _run(stage, prompts, batched=True)
    alone = _run(stage, prompts, batched=False)
    for together, separate in zip(batched, alone, strict=True):
        assert mx.array_equal(together, separate).item()


def test_each_request_in_a_batch_equals_the_request_run_by_itself(tiny_models: dict[str, Path]) -> None:
    stage = ModelStage(tiny_models["qwen3"], StageRange(0, NUM_LAYERS, NUM_LAYERS))
    prompts = [[1, 2, 3], [4, 5], [9]]
    together = _run(stage, prompts, batched=True)
    start = 0
    for index, prompt in enumerate(prompts):
        alone = _run(stage, [prompt], batched=False)
        assert mx.array_equal(together[0][:, start : start + len(prompt)], alone[0]).item()
        assert mx.array_equal(together[1][:, index : index + 1], alone[1]).item()
        start += len(prompt)


def test_invariance_check_passes_for_row_independent_kernels(tiny_models: dict[str, Path]) -> None:
    stage = ModelStage(tiny_models["llama"], StageRange(3, NUM_LAYERS, NUM_LAYERS))
    assert stage.check_batching(max_rows=40)
    assert stage.batch_invariant


def test_invariance_check_fails_when_a_row_depends_on_its_batch(tiny_models: dict[str, Path]) -> None:
    stage = ModelStage(tiny_models["llama"], StageRange(0, 2, NUM_LAYERS))

    def depends_on_batch(rows: mx.array) -> mx.array:
        return rows + rows.shape[1]  # a kernel whose per-row result changes with the row count

    assert not check_batch_invariance(stage.layers[0], [depends_on_batch], 64, mx.float32, 20)


def test_a_single_request_runs_the_block_directly(tiny_models: dict[str, Path]) -> None:
    stage = ModelStage(tiny_models["qwen2"], StageRange(0, 3, NUM_LAYERS))
    cache = stage.make_cache()
    hidden = stage.embed(mx.array([[1, 2, 3]]))
    plans = [LayerPlan(kind, batched=True) for kind in stage.layer_kinds]
    out = forward_rows(stage.layers, hidden, [RequestRows(cache, 0, 3)], plans)
    assert out.shape == (1, 3, 64)
    assert cache[0].offset == 3
