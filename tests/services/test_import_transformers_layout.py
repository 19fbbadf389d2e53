"""`strata models import --dir` of a transformers-layout checkpoint: the weights stored are the ones
mlx-lm's own loader would load (its `Model.sanitize`), so every shard finds its layers' tensors."""

from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
import pytest

from services.kernel.ids import ModelId
from services.models.model_files import read_weight_map
from services.models.model_import import import_directory
from services.models.model_store import ModelStore
from shard_server.model_stage import ModelStage, StageRange
from tests.tiny_families import FAMILY_CONFIGS, NUM_LAYERS, build_family_model

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

EXPERTS = 8


def _stored_weights(model_dir: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for file_name in sorted(set(read_weight_map(model_dir).values())):
        loaded = mx.load(str(model_dir / file_name))
        assert isinstance(loaded, dict)
        weights.update(loaded)
    return weights


def test_one_tensor_per_expert_is_stacked_as_mlx_lm_loads_it(tmp_path: Path) -> None:
    original_dir = build_family_model("qwen3_moe", tmp_path / "mlx")
    original = _stored_weights(original_dir)
    # The transformers layout: model.layers.N.mlp.experts.E.up_proj.weight, one tensor per expert.
    transformers: dict[str, mx.array] = {}
    for name, array in original.items():
        if ".mlp.switch_mlp." in name:
            for expert in range(EXPERTS):
                transformers[name.replace(".switch_mlp.", f".experts.{expert}.")] = array[expert]
        else:
            transformers[name] = array
    source = tmp_path / "transformers"
    source.mkdir()
    # mlx's stub leaves save_safetensors' return type out, which strict checking rejects on access.
    save = cast(Callable[[str, dict[str, mx.array]], None], mx.__dict__["save_safetensors"])
    save(str(source / "model.safetensors"), transformers)
    (source / "config.json").write_text((original_dir / "config.json").read_text())

    store = ModelStore(tmp_path / "models")
    imported = import_directory(store, ModelId("tiny-moe"), source)

    stored = _stored_weights(imported)
    assert sorted(stored) == sorted(original)
    assert all(mx.array_equal(stored[name], original[name]).item() for name in original)
    assert FAMILY_CONFIGS["qwen3_moe"]["num_experts"] == EXPERTS
    ModelStage(imported, StageRange(3, NUM_LAYERS, NUM_LAYERS))  # a stage finds every tensor it needs
