"""Families the shards cannot run are refused at import, with the reason, before anything is stored."""

import json
from pathlib import Path

import pytest

from services.app.cli import main
from services.kernel.ids import ModelId
from services.models.model_config import parse_model_config
from services.models.model_families import UnsupportedModelError, unsupported_reason
from services.models.model_import import import_directory
from services.models.model_store import ModelStore
from tests.services.test_model_store import single_file_model
from tests.services.tiny_models import tiny_llama

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

SLIDING_QWEN2: dict[str, object] = {
    "model_type": "qwen2",
    "use_sliding_window": True,
    "sliding_window": 4,
    "max_window_layers": 0,
}


def _reason(overrides: dict[str, object]) -> str | None:
    _, config = tiny_llama()
    return unsupported_reason(parse_model_config({**config, **overrides}, Path("config.json")))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_supported_families_have_no_reason(model_type: str) -> None:
    assert _reason({"model_type": model_type}) is None


def test_an_unknown_family_is_named_with_the_supported_ones() -> None:
    reason = _reason({"model_type": "phi3"})
    assert reason is not None
    assert "'phi3' is not supported" in reason
    assert "llama, qwen2, qwen3" in reason


def test_sliding_window_layers_are_refused() -> None:
    assert _reason(SLIDING_QWEN2) == "models with sliding-window attention are not supported yet"


@pytest.mark.parametrize("overrides", [{"model_type": "phi3"}, SLIDING_QWEN2])
def test_import_refuses_before_storing_anything(tmp_path: Path, overrides: dict[str, object]) -> None:
    single_file_model(tmp_path / "source", config_overrides=overrides)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(UnsupportedModelError, match="not supported"):
        import_directory(store, ModelId("refused"), tmp_path / "source")
    assert store.list_models() == []
    assert not (tmp_path / "models" / "refused").exists()


def test_the_import_command_says_why_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    single_file_model(tmp_path / "source", config_overrides={"model_type": "phi3"})
    home = tmp_path / "home"
    arguments = ["models", "import", "--dir", str(tmp_path / "source"), "--id", "refused", "--home", str(home)]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "refused" in error
    assert "model type 'phi3' is not supported" in error
    assert json.loads((tmp_path / "source" / "config.json").read_text())["model_type"] == "phi3"
