"""The models held on this host, one directory per model id under `$STRATA_HOME/models`.

A model directory is in `services.model_files` layout. Installing one is atomic: the model is written
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

import mlx.core as mx

from services import gguf_import
from services.ids import ModelId
from services.model_files import (
    CONFIG_FILE,
    INDEX_FILE,
    has_layered_layout,
    read_config,
    save_model_directory,
)
from services.settings import models_root, strata_home

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

    def import_gguf(self, model_id: ModelId, gguf_path: Path, *, replace: bool = False) -> Path:
        """Convert a GGUF file into the store; a no-op when the model is already there, unless `replace`."""
        return self._install(model_id, lambda staging: gguf_import.import_gguf(gguf_path, staging), replace)

    def import_directory(self, model_id: ModelId, source_dir: Path, *, replace: bool = False) -> Path:
        """Copy an MLX model directory into the store, re-splitting its weights into strata's layout.

        A source already in strata's layout is copied file for file; any other MLX model (one
        `model.safetensors` or several `model-*.safetensors`) is loaded and saved again layer by layer.
        Other top-level files (tokenizer, generation config, chat template) are copied as they are.
        """
        if not (source_dir / CONFIG_FILE).is_file():
            raise ValueError(f"{source_dir} is not a model directory: it has no {CONFIG_FILE}")
        if not any(source_dir.glob("model*.safetensors")):
            raise ValueError(f"{source_dir} has no model*.safetensors weight files")
        return self._install(model_id, lambda staging: _copy_model(source_dir, staging), replace)

    def remove(self, model_id: ModelId) -> None:
        """Delete a model; it disappears at once (renamed away first), then its files are deleted."""
        model_dir = self.model_dir(model_id)
        if not model_dir.exists():
            raise FileNotFoundError(f"model {model_id!r} is not in the store at {self.root}")
        retired = self._hidden_path(model_id, "removing")
        model_dir.rename(retired)
        shutil.rmtree(retired, ignore_errors=True)

    def _install(self, model_id: ModelId, build: Callable[[Path], None], replace: bool) -> Path:
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
            _fsync_directory(self.root)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def _hidden_path(self, model_id: ModelId, purpose: str) -> Path:
        return self.root / f".{model_id}.{purpose}-{uuid.uuid4().hex}"


def _copy_model(source_dir: Path, destination: Path) -> None:
    layered = has_layered_layout(source_dir)
    if not layered:
        weights: dict[str, mx.array] = {}
        for weight_file in sorted(source_dir.glob("model*.safetensors")):
            loaded = mx.load(str(weight_file))
            if not isinstance(loaded, dict):
                raise ValueError(f"{weight_file} did not load as a safetensors file")
            weights.update(loaded)
        save_model_directory(destination, read_config(source_dir), weights)
    for entry in sorted(source_dir.iterdir()):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        # When re-split, the weights and config were just written; everything else travels as it is.
        if layered or not _is_weights_or_config(entry.name):
            shutil.copy2(entry, destination / entry.name)


def _is_weights_or_config(file_name: str) -> bool:
    is_weight_file = file_name.startswith("model") and file_name.endswith(".safetensors")
    return is_weight_file or file_name in (INDEX_FILE, CONFIG_FILE)


def _fsync_tree(directory: Path) -> None:
    """Flush every file, then the directory, so the rename that follows publishes complete data."""
    for entry in directory.iterdir():
        if entry.is_file():
            with entry.open("rb") as stream:
                os.fsync(stream.fileno())
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
