"""Fixtures shared by every test folder (tests/conftest.py registers this module as a plugin).

The embedded SmolLM2 is imported from its GGUF once per session into `embedded_home`, a store only: no
service runs in that home. A cluster gets a private home sharing the store
(`services.kernel.settings.home_sharing_models`), since coordinators keep their durable state in their
home and two clusters must never share one; a simulated host that must not share files gets a copy
(`give_model`).
"""

import shutil
from pathlib import Path

import pytest

from services.kernel.settings import models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID, find_embedded_gguf
from services.models.model_import import import_gguf
from services.models.model_store import ModelStore


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose model store holds the embedded SmolLM2 (imported once per session)."""
    home = tmp_path_factory.mktemp("embedded-home")
    import_gguf(ModelStore(models_root(home)), EMBEDDED_MODEL_ID, find_embedded_gguf())
    return home


@pytest.fixture(scope="session")
def embedded_models(embedded_home: Path) -> Path:
    """The model store of `embedded_home`."""
    return models_root(embedded_home)


def give_model(models: Path, home: Path) -> None:
    """Puts the embedded model into `home`'s store (a copy: hosts share no files)."""
    shutil.copytree(models, models_root(home), dirs_exist_ok=True)


def require_debian_program(program: str, package: str) -> Path:
    """The path of `program`, or a skip naming the Debian package that has it (a failure under CI=true)."""
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed: apt-get install -y {package}")
    return Path(found)
