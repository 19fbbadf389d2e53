"""Placement's figures for every family agree with what mlx-lm really holds for that model.

Bytes per layer: every tensor of the layer, a mixture's experts included. Work: the weights a token
reads (a mixture's routed experts in the share it is routed to). KV: each layer's window and bytes
per token are those of the cache the model's own `make_cache` gives it, filled by a real forward.
"""

from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import RotatingKVCache, make_prompt_cache
from mlx_lm.utils import load_model

from services.kernel.ids import ModelId
from services.models.kv_footprint import layer_kv_caches
from services.models.model_config import read_model_config
from services.models.model_files import read_manifest
from services.models.model_spec import LAYER_FIXED_WORK, model_spec
from services.models.model_store import ModelStore
from tests.tiny_families import FAMILY_CONFIGS, NUM_LAYERS, build_family_model

pytestmark = [pytest.mark.unit, pytest.mark.timeout(300)]

PROMPT_LENGTH = 20
"""Longer than every window of the tiny models, so a sliding layer's cache is full."""


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    store = ModelStore(tmp_path_factory.mktemp("models"))
    return {case: build_family_model(case, store.model_dir(ModelId(f"tiny-{case}"))) for case in FAMILY_CONFIGS}


@pytest.mark.parametrize("case", sorted(FAMILY_CONFIGS))
def test_layer_bytes_are_every_tensor_the_model_holds_experts_included(family_dirs: dict[str, Path], case: str) -> None:
    model, _ = load_model(family_dirs[case])
    spec = model_spec(ModelId(case), family_dirs[case])
    parameters = tree_flatten(model.parameters())
    for layer in range(NUM_LAYERS):
        held = sum(array.nbytes for name, array in parameters if f"layers.{layer}." in name)
        assert spec.layers[layer].bytes == held


@pytest.mark.parametrize("case", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_a_tokens_work_counts_only_the_experts_it_is_routed_to(family_dirs: dict[str, Path], case: str) -> None:
    manifest = read_manifest(family_dirs[case])
    experts = manifest.config.experts
    assert experts is not None and experts.per_token == 2 and experts.count == 8
    spec = model_spec(ModelId(case), family_dirs[case])
    for layer, group in enumerate(manifest.layers):
        routed = group.routed_expert_parameter_count
        read = group.parameter_count - routed + routed * 2 // 8
        assert spec.layers[layer].work == read + LAYER_FIXED_WORK
    # Dense layers beside the mixture read every weight: qwen3_moe's mlp_only_layers, deepseek's first_k_dense.
    dense_first = case in ("qwen3_moe", "deepseek_v3")
    assert (manifest.layers[0].routed_expert_parameter_count == 0) == dense_first
    assert all(group.routed_expert_parameter_count > 0 for group in manifest.layers[1:])


@pytest.mark.parametrize("case", sorted(FAMILY_CONFIGS))
def test_kv_per_layer_is_what_the_models_own_caches_hold(family_dirs: dict[str, Path], case: str) -> None:
    model, _ = load_model(family_dirs[case])
    caches = make_prompt_cache(model)
    model(mx.arange(1, PROMPT_LENGTH + 1)[None], cache=caches)
    # One decode step: a rotating cache keeps a whole prefill chunk until the next step trims it.
    model(mx.array([[7]]), cache=caches)
    tokens = PROMPT_LENGTH + 1
    for cache, counted in zip(caches, layer_kv_caches(read_model_config(family_dirs[case])), strict=True):
        window = cache.max_size if isinstance(cache, RotatingKVCache) else None
        assert counted.window == window
        assert cache.keys is not None and cache.values is not None
        # Positions held (a plain cache's buffer grows in steps of 256: count only what is written).
        held = min(tokens, cache.keys.shape[2])
        assert held == (tokens if window is None else window)
        held_bytes = cache.keys[..., :held, :].nbytes + cache.values[..., :held, :].nbytes
        assert counted.bytes_for(tokens) == held_bytes
