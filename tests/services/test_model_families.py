"""Families the shards cannot run are refused at import, with the reason, before anything is stored."""

import importlib.util
import json
from pathlib import Path

import pytest
from mlx_lm.utils import MODEL_REMAPPING

from services.app.cli import main
from services.kernel.ids import ModelId
from services.models.model_config import parse_model_config
from services.models.model_families import FAMILY_MODULES, UnsupportedModelError, unsupported_reason
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


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "olmo2", "glm4"])
def test_supported_families_have_no_reason(model_type: str) -> None:
    assert _reason({"model_type": model_type}) is None


def test_the_family_table_follows_mlx_lms_own_remapping() -> None:
    # mistral is built by llama's classes, as mlx-lm's MODEL_REMAPPING says; no family is imported by
    # its own name where mlx-lm remaps it, and every module named exists in mlx-lm.
    for model_type, module in FAMILY_MODULES.items():
        assert module == MODEL_REMAPPING.get(model_type, model_type)
        assert importlib.util.find_spec(f"mlx_lm.models.{module}") is not None


def test_an_unknown_family_is_named_with_the_supported_ones() -> None:
    reason = _reason({"model_type": "mamba"})
    assert reason is not None
    assert "'mamba' is not supported" in reason
    assert "gemma3, gemma3_text, glm4, gpt_oss, granite, llama" in reason


def test_sliding_window_layers_are_refused_where_mlx_lm_ignores_them() -> None:
    assert (
        _reason(SLIDING_QWEN2) == "sliding-window attention is not supported for model type 'qwen2' (mlx-lm ignores it)"
    )


def test_sliding_window_layers_of_families_that_slide_are_accepted() -> None:
    sliding = {"layer_types": ["sliding_attention", "full_attention"] * 2, "sliding_window": 8}
    assert _reason({"model_type": "llama", **sliding}) is None
    assert _reason({"model_type": "gpt_oss", **sliding}) is None


def test_layers_of_other_kinds_are_refused() -> None:
    reason = _reason({"model_type": "llama", "layer_types": ["linear_attention"] * 4})
    assert reason == "models with layers other than full or sliding-window attention are not supported yet"


def test_a_microscaling_quantization_is_refused() -> None:
    reason = _reason({"model_type": "gpt_oss", "quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"}})
    assert reason == "quantization mode 'mxfp4' is not supported yet (only affine)"
    assert _reason({"quantization": {"group_size": 64, "bits": 4, "mode": "affine"}}) is None


@pytest.mark.parametrize("overrides", [{"model_type": "mamba"}, SLIDING_QWEN2])
def test_import_refuses_before_storing_anything(tmp_path: Path, overrides: dict[str, object]) -> None:
    single_file_model(tmp_path / "source", config_overrides=overrides)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(UnsupportedModelError, match="not supported"):
        import_directory(store, ModelId("refused"), tmp_path / "source")
    assert store.list_models() == []
    assert not (tmp_path / "models" / "refused").exists()


def test_the_import_command_says_why_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    single_file_model(tmp_path / "source", config_overrides={"model_type": "mamba"})
    home = tmp_path / "home"
    arguments = ["models", "import", "--dir", str(tmp_path / "source"), "--id", "refused", "--home", str(home)]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "refused" in error
    assert "model type 'mamba' is not supported" in error
    assert json.loads((tmp_path / "source" / "config.json").read_text())["model_type"] == "mamba"
