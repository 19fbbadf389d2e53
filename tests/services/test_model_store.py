"""The model store: id validation, atomic installs, no-op re-imports, re-splitting foreign layouts."""

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.llama import Model
from mlx_lm.utils import load_model

from services.kernel.ids import ModelId
from services.models.model_files import INDEX_FILE, has_layered_layout
from services.models.model_import import import_directory
from services.models.model_store import ModelStore, default_models_root, parse_model_id
from services.models.model_writer import save_model_directory
from tests.services.tiny_models import model_weights, tiny_llama

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

MODEL_ID = ModelId("tiny-llama")
PROMPT = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])


def single_file_model(directory: Path, *, seed: int = 0, config_overrides: dict[str, object] | None = None) -> Model:
    """An MLX model as mlx-lm's own `save` writes a small one: one model.safetensors beside the config."""
    model, config = tiny_llama(seed=seed)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({**config, **(config_overrides or {})}))
    (directory / "tokenizer.json").write_text('{"stand-in": true}')
    model.save_weights(str(directory / "model.safetensors"))
    return model


def directory_contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("model_id", ["smollm2-135m-instruct", "a", "qwen2.5_0.5b-q4"])
def test_valid_model_ids(model_id: str) -> None:
    assert parse_model_id(model_id) == model_id


@pytest.mark.parametrize("model_id", ["", ".", "..", ".hidden", "Upper", "a/b", "a b", "-x", "x" * 129])
def test_invalid_model_ids_are_refused(tmp_path: Path, model_id: str) -> None:
    with pytest.raises(ValueError, match="invalid model id"):
        parse_model_id(model_id)
    with pytest.raises(ValueError, match="invalid model id"):
        ModelStore(tmp_path).model_dir(ModelId(model_id))


def test_single_file_model_is_resplit_into_the_layered_layout(tmp_path: Path) -> None:
    model = single_file_model(tmp_path / "source")
    store = ModelStore(tmp_path / "models")

    model_dir = import_directory(store, MODEL_ID, tmp_path / "source")

    assert model_dir == tmp_path / "models" / MODEL_ID
    assert store.has_model(MODEL_ID)
    assert store.list_models() == [MODEL_ID]
    assert has_layered_layout(model_dir)
    assert not (model_dir / "model.safetensors").exists()
    assert (model_dir / "tokenizer.json").read_text() == '{"stand-in": true}'
    loaded, _ = load_model(model_dir)
    assert isinstance(loaded, Model)
    assert mx.array_equal(loaded(PROMPT), model(PROMPT)).item()
    assert [entry.name for entry in (tmp_path / "models").iterdir()] == [MODEL_ID]  # no staging left


def test_layered_model_is_copied_file_for_file(tmp_path: Path) -> None:
    model, config = tiny_llama()
    save_model_directory(tmp_path / "source", config, model_weights(model))
    store = ModelStore(tmp_path / "models")

    model_dir = import_directory(store, MODEL_ID, tmp_path / "source")

    assert directory_contents(model_dir) == directory_contents(tmp_path / "source")


def test_reimport_is_a_no_op_unless_replace(tmp_path: Path) -> None:
    single_file_model(tmp_path / "first", seed=0)
    single_file_model(tmp_path / "second", seed=1)
    store = ModelStore(tmp_path / "models")
    model_dir = import_directory(store, MODEL_ID, tmp_path / "first")
    first_contents = directory_contents(model_dir)

    import_directory(store, MODEL_ID, tmp_path / "second")
    assert directory_contents(model_dir) == first_contents

    import_directory(store, MODEL_ID, tmp_path / "second", replace=True)
    assert directory_contents(model_dir) != first_contents
    assert (model_dir / INDEX_FILE).is_file()
    assert [entry.name for entry in (tmp_path / "models").iterdir()] == [MODEL_ID]


def test_failed_import_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    single_file_model(tmp_path / "good")
    single_file_model(tmp_path / "broken", config_overrides={"num_hidden_layers": "four"})
    store = ModelStore(tmp_path / "models")
    model_dir = import_directory(store, MODEL_ID, tmp_path / "good")
    before = directory_contents(model_dir)

    with pytest.raises(ValueError, match="num_hidden_layers"):
        import_directory(store, MODEL_ID, tmp_path / "broken", replace=True)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        import_directory(store, ModelId("other"), tmp_path / "broken")

    assert directory_contents(model_dir) == before
    assert [entry.name for entry in (tmp_path / "models").iterdir()] == [MODEL_ID]


def test_incomplete_leftover_is_not_listed_and_gets_replaced(tmp_path: Path) -> None:
    single_file_model(tmp_path / "source")
    store = ModelStore(tmp_path / "models")
    leftover = store.model_dir(MODEL_ID)
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")

    assert not store.has_model(MODEL_ID)
    assert store.list_models() == []
    import_directory(store, MODEL_ID, tmp_path / "source")
    assert store.has_model(MODEL_ID)


def test_remove(tmp_path: Path) -> None:
    single_file_model(tmp_path / "source")
    store = ModelStore(tmp_path / "models")
    import_directory(store, MODEL_ID, tmp_path / "source")

    store.remove(MODEL_ID)

    assert not store.has_model(MODEL_ID)
    assert store.list_models() == []
    assert list((tmp_path / "models").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="tiny-llama"):
        store.remove(MODEL_ID)


def test_import_directory_needs_config_and_weights(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"config\.json"):
        import_directory(store, MODEL_ID, tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="safetensors"):
        import_directory(store, MODEL_ID, tmp_path / "empty")


def test_list_models_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert ModelStore(tmp_path / "nowhere").list_models() == []


def test_default_root_follows_strata_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STRATA_HOME", str(tmp_path))
    assert default_models_root() == tmp_path / "models"
    assert ModelStore.from_environment().root == tmp_path / "models"
