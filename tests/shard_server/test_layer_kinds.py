"""Layer kinds from the model's own caches; what a stage refuses to load, and why."""

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

from services.kernel.ids import ModelId
from services.models.model_config import read_model_config
from services.models.model_store import ModelStore
from shard_server.layer_kinds import LayerKind, UnsupportedCacheError, layer_kind_of
from shard_server.model_stage import ModelLoadError, ModelStage, StageRange
from shard_server.prefix_cache import prefixes_reusable
from tests.tiny_families import NUM_LAYERS, WINDOW, build_family_model

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


def test_a_layers_kind_is_the_cache_its_model_makes() -> None:
    assert layer_kind_of(KVCache(), array_mask=False) == LayerKind()
    assert layer_kind_of(RotatingKVCache(max_size=8, keep=4), array_mask=True) == LayerKind(8, 4, True)
    with pytest.raises(UnsupportedCacheError, match="QuantizedKVCache"):
        layer_kind_of(QuantizedKVCache(), array_mask=False)


def test_a_sliding_layers_mask_is_the_windowed_one_mlx_lm_builds() -> None:
    kind = LayerKind(window=WINDOW)
    hidden = mx.zeros((1, 3 * WINDOW, 4))
    cache = kind.new_cache()
    mask = kind.mask(hidden, cache)
    expected = create_attention_mask(hidden, RotatingKVCache(max_size=WINDOW), window_size=WINDOW)
    assert isinstance(mask, mx.array) and isinstance(expected, mx.array)
    assert mx.array_equal(mask, expected).item()
    assert not mask[-1, 0].item()  # the last row no longer sees the first position


def test_a_stage_loads_the_kinds_of_its_own_layers(tmp_path: Path) -> None:
    model_dir = build_family_model("gpt_oss", ModelStore(tmp_path).model_dir(ModelId("tiny-gpt-oss")))
    stage = ModelStage(model_dir, StageRange(1, 4, NUM_LAYERS))
    # gpt_oss alternates sliding (even) and full (odd) layers; this stage holds layers 1, 2 and 3.
    assert [kind.window for kind in stage.layer_kinds] == [None, WINDOW, None]
    assert [type(cache) for cache in stage.make_cache()] == [KVCache, RotatingKVCache, KVCache]
    assert not stage.keeps_whole_context
    assert not prefixes_reusable(stage.config)


def test_prompt_prefixes_are_kept_only_where_every_layer_keeps_the_context(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert prefixes_reusable(read_model_config(build_family_model("deepseek_v3", store.model_dir(ModelId("mla")))))
    assert not prefixes_reusable(read_model_config(build_family_model("gemma3", store.model_dir(ModelId("gemma3")))))


def test_a_stage_refuses_windows_its_family_would_ignore(tmp_path: Path) -> None:
    model_dir = build_family_model("qwen2", ModelStore(tmp_path).model_dir(ModelId("sliding-qwen2")))
    config = json.loads((model_dir / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4, max_window_layers=2)
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="sliding-window attention is not supported for model type 'qwen2'"):
        ModelStage(model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS))


def test_a_stage_refuses_a_family_it_cannot_split(tmp_path: Path) -> None:
    model_dir = build_family_model("llama", ModelStore(tmp_path).model_dir(ModelId("renamed")))
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = "mamba"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="model type 'mamba' is not supported"):
        ModelStage(model_dir, StageRange(0, NUM_LAYERS, NUM_LAYERS))
