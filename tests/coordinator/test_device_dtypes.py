"""Compute dtype "auto" per device: a CPU shard holds float32, a GPU shard two bytes a parameter, and
placement counts each shard's own (services/kernel/compute_dtype.py, coordinator/placement.py)."""

from pathlib import Path

import pytest

from coordinator.placement import Placement, PlacementRefusal, place, stage_bytes
from services.cluster.state import ClusterState, ModelSpec, RegisteredShard, WeightCost
from services.kernel.compute_dtype import device_compute_dtype, parse_compute_dtype_choice
from services.kernel.devices import DeviceKind
from services.kernel.ids import ModelId
from services.models.model_files import read_manifest
from services.models.model_spec import model_spec
from shard_server.wire import WireError, check_assign_request
from strata_wire import shard_pb2
from tests.coordinator.builders import ranges, shard_server
from tests.tiny_architectures import build_tiny_model

pytestmark = pytest.mark.unit


def auto_model(num_layers: int = 4, layer_parameters: int = 100) -> ModelSpec:
    """A model whose spec was made with "auto": bytes in float32, parameters counted."""
    layer = WeightCost(bytes=4 * layer_parameters, work=10, parameters=layer_parameters)
    return ModelSpec(
        model_id=ModelId("tiny"),
        num_layers=num_layers,
        layers=(layer,) * num_layers,
        embedding=WeightCost(bytes=400, work=0, parameters=100),
        head=WeightCost(bytes=400, work=10, parameters=100),
        tied_embeddings=False,
        kv_bytes_per_layer=0,
        bytes_per_parameter_by_device={"cpu": 4, "cuda": 2, "metal": 2},
    )


def shard_on(shard_id: str, device: DeviceKind, memory: int) -> RegisteredShard:
    return shard_server(shard_id, memory).model_copy(update={"device": device})


def test_auto_means_float32_on_the_cpu_bfloat16_on_gpus_and_float16_before_sm_80() -> None:
    assert device_compute_dtype("cpu") == "float32"
    assert device_compute_dtype("metal") == "bfloat16"
    assert device_compute_dtype("cuda") == "bfloat16"  # compute capability unknown
    assert device_compute_dtype("cuda", 9) == "bfloat16"
    assert device_compute_dtype("cuda", 8) == "bfloat16"
    assert device_compute_dtype("cuda", 7) == "float16"


def test_a_dtype_choice_is_auto_or_a_dtype_and_anything_else_is_refused_naming_the_choices() -> None:
    assert [parse_compute_dtype_choice(name) for name in ("auto", "stored", "bfloat16")] == [
        "auto",
        "stored",
        "bfloat16",
    ]
    with pytest.raises(ValueError, match=r"auto or one of stored, float32, float16, bfloat16; got 'bf16'"):
        parse_compute_dtype_choice("bf16")


def test_a_gpu_shard_counts_half_the_bytes_of_a_cpu_shard_for_the_same_layers() -> None:
    model = auto_model()

    assert stage_bytes(model, 0, 4, "cpu") == 4 * 400 + 400 + 400
    assert stage_bytes(model, 0, 4, "cuda") == 4 * 200 + 200 + 200
    assert stage_bytes(model, 0, 4, "metal") == stage_bytes(model, 0, 4, "cuda")
    assert stage_bytes(model, 0, 4) == stage_bytes(model, 0, 4, "cpu")  # no device: the spec's own bytes


def test_a_fixed_dtype_counts_the_same_bytes_on_every_device() -> None:
    model = auto_model().model_copy(update={"bytes_per_parameter_by_device": {}})

    assert stage_bytes(model, 0, 4, "cuda") == stage_bytes(model, 0, 4, "cpu") == 2400


def test_a_gpu_fits_a_model_in_bfloat16_that_a_cpu_of_the_same_memory_cannot_hold_in_float32() -> None:
    model = auto_model()  # 2400 bytes in float32, 1200 in bfloat16

    assert isinstance(place(model, [shard_on("cpu-host", "cpu", 2000)]), PlacementRefusal)
    result = place(model, [shard_on("gpu-host", "cuda", 2000)])
    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("gpu-host", 0, 4)]


def test_a_mixed_cluster_counts_each_shard_in_its_own_dtype() -> None:
    # Equal speeds, so work alone would split 2 + 2; the CPU's 900 bytes hold one float32 layer and the
    # embedding (800), the GPU's 900 the other three layers and the head in bfloat16 (800).
    model = auto_model()
    shards = [shard_on("cpu-host", "cpu", 900), shard_on("gpu-host", "cuda", 900)]

    result = place(model, shards)

    assert isinstance(result, Placement)
    assert ranges(result.stages) == [("cpu-host", 0, 1), ("gpu-host", 1, 4)]
    # Counted as one dtype for both (float32) it would not fit at all.
    float32_only = model.model_copy(update={"bytes_per_parameter_by_device": {}})
    assert isinstance(place(float32_only, shards), PlacementRefusal)


def test_a_spec_from_an_older_log_without_parameter_counts_keeps_its_bytes() -> None:
    layer = WeightCost(bytes=400, work=10)  # parameters 0: unknown
    model = auto_model().model_copy(update={"layers": (layer,) * 4})

    assert stage_bytes(model, 0, 4, "cuda") == 4 * 400 + 200 + 200


def test_an_auto_spec_counts_float32_bytes_and_every_parameter(tmp_path: Path) -> None:
    model_dir = build_tiny_model("llama", tmp_path / "tiny")
    manifest = read_manifest(model_dir)

    auto = model_spec(ModelId("tiny"), model_dir, "auto")
    float32 = model_spec(ModelId("tiny"), model_dir, "float32")
    bfloat16 = model_spec(ModelId("tiny"), model_dir, "bfloat16")

    assert [layer.bytes for layer in auto.layers] == [layer.bytes for layer in float32.layers]
    assert [layer.parameters for layer in auto.layers] == [group.parameter_count for group in manifest.layers]
    assert auto.bytes_per_parameter_by_device == {"cpu": 4, "cuda": 2, "metal": 2}
    whole = auto.num_layers
    assert stage_bytes(auto, 0, whole, "cpu") == stage_bytes(float32, 0, whole)
    assert stage_bytes(auto, 0, whole, "cuda") == stage_bytes(bfloat16, 0, whole)
    assert float32.bytes_per_parameter_by_device == {}


def test_an_auto_spec_survives_the_state_s_json_round_trip() -> None:
    state = ClusterState(models={ModelId("tiny"): auto_model()})

    assert ClusterState.model_validate_json(state.model_dump_json()) == state


def assign_request(compute_dtype: str) -> shard_pb2.AssignRequest:
    return shard_pb2.AssignRequest(
        instance_id="tiny@1",
        model_id="tiny",
        start_layer=0,
        end_layer=2,
        num_layers=2,
        prefill_step_size=256,
        compute_dtype=compute_dtype,
        ring_size=1,
    )


def test_a_shard_takes_auto_from_the_coordinator_and_refuses_an_unknown_dtype() -> None:
    assert check_assign_request(assign_request("auto")) == "auto"
    assert check_assign_request(assign_request("")) == "stored"  # an older coordinator's default
    with pytest.raises(WireError, match="got 'float8'"):
        check_assign_request(assign_request("float8"))
