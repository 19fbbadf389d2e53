"""model_spec: placement costs from a model's files; a layer's work counts its fixed work beside its weights."""

from pathlib import Path

import pytest

from coordinator.placement import Placement, place
from services.cluster.state import ModelSpec, WeightCost
from services.kernel.ids import ModelId
from services.models.model_files import read_manifest
from services.models.model_spec import LAYER_FIXED_WORK, model_spec
from tests.coordinator.builders import ranges, shard_server
from tests.tiny_architectures import build_tiny_model

pytestmark = pytest.mark.unit

# SmolLM2-135M: 30 layers of 3,540,096 parameters, a tied head reading the 49152 x 576 embedding.
SMOLLM2_LAYER_PARAMETERS = 3_540_096
SMOLLM2_HEAD_PARAMETERS = 49_152 * 576 + 576


def test_a_layers_work_is_its_parameters_plus_the_fixed_work(tmp_path: Path) -> None:
    model_dir = build_tiny_model("llama", tmp_path / "tiny")
    manifest = read_manifest(model_dir)

    spec = model_spec(ModelId("tiny"), model_dir, "float32")

    assert [layer.work for layer in spec.layers] == [
        group.parameter_count + LAYER_FIXED_WORK for group in manifest.layers
    ]
    tied = manifest.embedding.parameter_count if manifest.tie_word_embeddings else 0
    assert spec.head.work == manifest.head.parameter_count + tied
    assert spec.embedding.work == 0
    assert [layer.bytes for layer in spec.layers] == [4 * group.parameter_count for group in manifest.layers]


def test_smollm2s_head_weighs_about_five_layers_and_two_shards_split_18_and_12() -> None:
    # Measured on one and two cores: the head takes as long as ~5 layers, though its parameters weigh 8.
    layer = WeightCost(bytes=4 * SMOLLM2_LAYER_PARAMETERS, work=SMOLLM2_LAYER_PARAMETERS + LAYER_FIXED_WORK)
    model = ModelSpec(
        model_id=ModelId("smollm2"),
        num_layers=30,
        layers=(layer,) * 30,
        embedding=WeightCost(bytes=4 * 49_152 * 576, work=0),
        head=WeightCost(bytes=4 * 576, work=SMOLLM2_HEAD_PARAMETERS),
        tied_embeddings=True,
        kv_bytes_per_layer=0,
    )

    assert 4.5 < model.head.work / layer.work < 5.5
    two = place(model, [shard_server("shard-a", 10**10), shard_server("shard-b", 10**10)])
    three = place(model, [shard_server(name, 10**10) for name in ("shard-a", "shard-b", "shard-c")])

    assert isinstance(two, Placement) and isinstance(three, Placement)
    assert ranges(two.stages) == [("shard-a", 0, 18), ("shard-b", 18, 30)]
    assert ranges(three.stages) == [("shard-a", 0, 12), ("shard-b", 12, 24), ("shard-c", 24, 30)]
