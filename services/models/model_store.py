"""The models held on this host, one directory per model id under `$STRATA_HOME/models`.

A model directory is in `services.models.model_files` layout. Installing one is atomic: the model is written
into a hidden staging folder beside the others (same file system), flushed to disk, then renamed into
place, so readers and crashes only ever see no model or a complete one. A model is complete when its
config.json and weight index exist. Hidden entries (names starting with ".") are staging or retired
folders and are never listed.
"""

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from services.kernel.ids import ModelId
from services.kernel.settings import models_root, strata_home
from services.models.model_config import CONFIG_FILE
from services.models.model_files import INDEX_FILE
from services.platform.durable_files import fsync_folder

_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def parse_model_id(text: str) -> ModelId:
    """`text` as a ModelId; raises ValueError unless it is a safe directory name."""
    if not _MODEL_ID.fullmatch(text):
        raise ValueError(
            f"invalid model id {text!r}: use 1-128 lowercase letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )
    return ModelId(text)


def default_models_root() -> Path:
    """`$STRATA_HOME/models`, with `~/.strata` when STRATA_HOME is unset."""
    return models_root(strata_home())


class ModelStore:
    """Models on disk under one root folder; safe against crashes, not a lock between writers."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_environment(cls) -> "ModelStore":
        return cls(default_models_root())

    def model_dir(self, model_id: ModelId) -> Path:
        return self.root / parse_model_id(model_id)

    def has_model(self, model_id: ModelId) -> bool:
        model_dir = self.model_dir(model_id)
        return (model_dir / CONFIG_FILE).is_file() and (model_dir / INDEX_FILE).is_file()

    def list_models(self) -> list[ModelId]:
        if not self.root.is_dir():
            return []
        return sorted(
            ModelId(entry.name)
            for entry in self.root.iterdir()
            if _MODEL_ID.fullmatch(entry.name) and self.has_model(ModelId(entry.name))
        )

    def remove(self, model_id: ModelId) -> None:
        """Delete a model; it disappears at once (renamed away first), then its files are deleted."""
        model_dir = self.model_dir(model_id)
        if not model_dir.exists():
            raise FileNotFoundError(f"model {model_id!r} is not in the store at {self.root}")
        retired = self._hidden_path(model_id, "removing")
        model_dir.rename(retired)
        shutil.rmtree(retired, ignore_errors=True)

    def install(self, model_id: ModelId, build: Callable[[Path], None], *, replace: bool) -> Path:
        """Build a model into a staging folder with `build`, then publish it atomically; a no-op when the
        model is already there, unless `replace`."""
        final = self.model_dir(model_id)
        if self.has_model(model_id) and not replace:
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_id}.importing-", dir=self.root))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; a model directory is not secret
            build(staging)
            _fsync_tree(staging)
            # A complete model is only replaced on request; an incomplete leftover is always replaced.
            retired = self._hidden_path(model_id, "replaced") if final.exists() else None
            if retired is not None:
                final.rename(retired)
            try:
                staging.rename(final)
            except OSError:
                if retired is not None and not final.exists():
                    retired.rename(final)
                raise
            fsync_folder(self.root)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def _hidden_path(self, model_id: ModelId, purpose: str) -> Path:
        return self.root / f".{model_id}.{purpose}-{uuid.uuid4().hex}"


def _fsync_tree(directory: Path) -> None:
    """Flush every file, then the directory, so the rename that follows publishes complete data."""
    for entry in directory.iterdir():
        if entry.is_file():
            with entry.open("rb") as stream:
                os.fsync(stream.fileno())
    fsync_folder(directory)
