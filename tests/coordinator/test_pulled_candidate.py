"""A model about to be pulled, as `strata models pull` describes it to PreviewServing: its sizes equal
the stored model's, and a malformed description is INVALID_ARGUMENT, never a crash."""

from pathlib import Path

import pytest

from coordinator.wire import pulled_candidate_from_pb
from services.app.pull_fit_check import pulled_candidate_to_pb
from services.kernel.ids import ModelId
from services.kernel.status_errors import InvalidArgumentError
from services.models.lazy_pull import TensorPlace
from services.models.model_config import read_model_config
from services.models.model_files import read_manifest, read_safetensors_header, read_weight_map
from services.models.model_spec import model_spec, spec_from_manifest
from strata_wire import model_transfer_pb2
from tests.tiny_architectures import build_tiny_model

pytestmark = pytest.mark.unit


def _candidate(model_dir: Path) -> model_transfer_pb2.PulledModelCandidate:
    places: dict[str, dict[str, TensorPlace]] = {}
    offset = 0
    for name in sorted(set(read_weight_map(model_dir).values())):
        places[name] = {}
        for key, header in read_safetensors_header(model_dir / name).items():
            places[name][key] = TensorPlace(header.dtype, header.shape, offset, offset + header.stored_bytes)
            offset += header.stored_bytes
    return pulled_candidate_to_pb(read_model_config(model_dir), places)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_a_candidate_has_the_sizes_of_the_stored_model(tmp_path: Path, model_type: str) -> None:
    model_dir = build_tiny_model(model_type, tmp_path / model_type)
    manifest = pulled_candidate_from_pb(_candidate(model_dir))
    stored = read_manifest(model_dir)
    assert (manifest.embedding, manifest.layers, manifest.head, manifest.tie_word_embeddings) == (
        stored.embedding, stored.layers, stored.head, stored.tie_word_embeddings
    )  # fmt: skip
    model_id = ModelId(model_type)
    for dtype in ("stored", "float32"):
        assert spec_from_manifest(model_id, manifest, dtype) == model_spec(model_id, model_dir, dtype)


def test_a_malformed_candidate_is_invalid_argument(tmp_path: Path) -> None:
    good = _candidate(build_tiny_model("llama", tmp_path / "llama"))
    not_json = model_transfer_pb2.PulledModelCandidate(config_json="{", tensors=good.tensors)
    with pytest.raises(InvalidArgumentError, match="config_json"):
        pulled_candidate_from_pb(not_json)
    no_layers = model_transfer_pb2.PulledModelCandidate(config_json='{"model_type": "llama"}', tensors=good.tensors)
    with pytest.raises(InvalidArgumentError, match="config_json"):
        pulled_candidate_from_pb(no_layers)
    negative = model_transfer_pb2.PulledModelCandidate(config_json=good.config_json)
    negative.tensors.add(name="model.layers.0.mlp.up_proj.weight", dtype="F32", shape=[-1], stored_bytes=4)
    with pytest.raises(InvalidArgumentError, match="negative size"):
        pulled_candidate_from_pb(negative)
