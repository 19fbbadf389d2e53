"""A model store holding the embedded SmolLM2, imported once per session; tests copy it into the one
host (STRATA_HOME) that has the model at start."""

import shutil
from pathlib import Path

import pytest

from services.kernel.settings import models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID, find_embedded_gguf
from services.models.model_import import import_gguf
from services.models.model_store import ModelStore


@pytest.fixture(scope="session")
def embedded_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("embedded-models")
    import_gguf(ModelStore(models_root(home)), EMBEDDED_MODEL_ID, find_embedded_gguf())
    return models_root(home)


def give_model(models: Path, home: Path) -> None:
    """Puts the embedded model into `home`'s store (a copy: hosts share no files)."""
    shutil.copytree(models, models_root(home), dirs_exist_ok=True)
