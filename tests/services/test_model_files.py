"""strata's model layout: saving, manifests read from headers only, and the files each stage needs."""

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.llama import Model
from mlx_lm.utils import load_model

from services.models.model_files import (
    EMBED_FILE,
    HEAD_FILE,
    INDEX_FILE,
    has_layered_layout,
    read_manifest,
    weight_files_for_stage,
)
from services.models.model_writer import save_model_directory
from tests.services.tiny_models import (
    EMBED_PARAMETERS,
    LAYER_PARAMETERS,
    NUM_LAYERS,
    head_parameters,
    model_weights,
    tiny_llama,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

PROMPT = mx.array([[1, 5, 17, 42, 255, 0, 3]])


def layer_file(layer: int) -> str:
    return f"model-layer-{layer:05d}.safetensors"


def saved_tiny_llama(directory: Path, *, tied: bool = True, quantized: bool = False) -> Model:
    model, config = tiny_llama(tied=tied, quantized=quantized)
    save_model_directory(directory, config, model_weights(model))
    return model


def test_layout_has_one_file_per_layer_and_a_complete_index(tmp_path: Path) -> None:
    model = saved_tiny_llama(tmp_path, tied=False)

    weight_files = sorted(path.name for path in tmp_path.glob("model*.safetensors"))
    assert weight_files == sorted([EMBED_FILE, HEAD_FILE, *(layer_file(n) for n in range(NUM_LAYERS))])
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    weight_map: dict[str, str] = index["weight_map"]
    assert set(weight_map) == set(model_weights(model))
    assert weight_map["model.embed_tokens.weight"] == EMBED_FILE
    assert weight_map["model.layers.2.mlp.up_proj.weight"] == layer_file(2)
    assert weight_map["model.norm.weight"] == HEAD_FILE
    assert weight_map["lm_head.weight"] == HEAD_FILE
    assert index["metadata"]["total_size"] == sum(array.nbytes for array in model_weights(model).values())
    assert has_layered_layout(tmp_path)


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "quantized"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_manifest_counts_match_the_model(tmp_path: Path, tied: bool, quantized: bool) -> None:
    model = saved_tiny_llama(tmp_path, tied=tied, quantized=quantized)
    weights = model_weights(model)
    unquantized, _ = tiny_llama(tied=tied)

    manifest = read_manifest(tmp_path)

    assert (manifest.model_type, manifest.num_layers, manifest.hidden_size, manifest.vocab_size) == (
        "llama",
        NUM_LAYERS,
        64,
        256,
    )
    assert manifest.tie_word_embeddings is tied
    assert manifest.context_length == 4096  # the config has no max_position_embeddings
    assert manifest.embedding.parameter_count == EMBED_PARAMETERS
    assert [layer.parameter_count for layer in manifest.layers] == [LAYER_PARAMETERS] * NUM_LAYERS
    assert manifest.head.parameter_count == head_parameters(tied=tied)
    assert manifest.total_parameter_count == sum(array.size for array in model_weights(unquantized).values())

    def stored(prefix: str) -> int:
        return sum(array.nbytes for key, array in weights.items() if key.startswith(prefix))

    assert manifest.embedding.stored_bytes == stored("model.embed_tokens.")
    assert [layer.stored_bytes for layer in manifest.layers] == [
        stored(f"model.layers.{n}.") for n in range(NUM_LAYERS)
    ]
    assert manifest.head.stored_bytes == stored("model.norm.") + stored("lm_head.")
    assert manifest.total_stored_bytes == sum(array.nbytes for array in weights.values())
    if quantized:
        assert manifest.total_stored_bytes < sum(array.nbytes for array in model_weights(unquantized).values())


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "quantized"])
def test_mlx_lm_loads_the_directory_and_computes_the_same_logits(tmp_path: Path, quantized: bool) -> None:
    model = saved_tiny_llama(tmp_path, quantized=quantized)

    loaded, config = load_model(tmp_path)

    assert isinstance(loaded, Model)
    assert config["num_hidden_layers"] == NUM_LAYERS
    assert mx.array_equal(loaded(PROMPT), model(PROMPT)).item()


@pytest.mark.parametrize(
    ("start", "end", "tied", "expected"),
    [
        (0, 2, True, [EMBED_FILE, layer_file(0), layer_file(1)]),
        (1, 3, True, [layer_file(1), layer_file(2)]),
        (2, 4, True, [EMBED_FILE, layer_file(2), layer_file(3), HEAD_FILE]),
        (2, 4, False, [layer_file(2), layer_file(3), HEAD_FILE]),
        (0, 4, True, [EMBED_FILE, *(layer_file(n) for n in range(4)), HEAD_FILE]),
        (3, 4, False, [layer_file(3), HEAD_FILE]),
    ],
    ids=["first", "middle", "last-tied", "last-untied", "whole-tied", "last-layer-only"],
)
def test_weight_files_for_stage(tmp_path: Path, start: int, end: int, tied: bool, expected: list[str]) -> None:
    saved_tiny_llama(tmp_path, tied=tied)

    files = weight_files_for_stage(tmp_path, start, end)

    assert [path.name for path in files] == expected
    assert all(path.parent == tmp_path and path.is_file() for path in files)


@pytest.mark.parametrize(("start", "end"), [(2, 2), (3, 1), (-1, 2), (0, NUM_LAYERS + 1)])
def test_weight_files_for_stage_rejects_bad_ranges(tmp_path: Path, start: int, end: int) -> None:
    saved_tiny_llama(tmp_path)
    with pytest.raises(ValueError, match="stage"):
        weight_files_for_stage(tmp_path, start, end)


def test_save_refuses_a_directory_that_already_holds_weights(tmp_path: Path) -> None:
    saved_tiny_llama(tmp_path)
    model, config = tiny_llama()
    with pytest.raises(FileExistsError):
        save_model_directory(tmp_path, config, model_weights(model))


def test_save_refuses_weights_missing_a_layer(tmp_path: Path) -> None:
    model, config = tiny_llama()
    weights = {key: array for key, array in model_weights(model).items() if ".layers.2." not in key}
    with pytest.raises(ValueError, match=r"layers \[2\]"):
        save_model_directory(tmp_path, config, weights)
