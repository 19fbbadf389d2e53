"""Bringing a model into the store in strata's layout: from a GGUF file or an MLX model directory.

This is the MLX side of the store (it loads and saves tensors); `ModelStore` itself reads only files.
"""

import importlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx

from services.kernel.ids import ModelId
from services.models import gguf_import
from services.models.model_config import CONFIG_FILE, ModelConfig, read_model_config
from services.models.model_families import check_supported, mlx_module_of
from services.models.model_files import INDEX_FILE, has_layered_layout
from services.models.model_store import ModelStore
from services.models.model_writer import save_model_directory


def import_gguf(store: ModelStore, model_id: ModelId, gguf_path: Path, *, replace: bool = False) -> Path:
    """Convert a GGUF file into the store; a no-op when the model is already there, unless `replace`."""
    return store.install(model_id, lambda staging: gguf_import.import_gguf(gguf_path, staging), replace=replace)


def import_directory(store: ModelStore, model_id: ModelId, source_dir: Path, *, replace: bool = False) -> Path:
    """Copy an MLX model directory into the store, re-splitting its weights into strata's layout.

    A source already in strata's layout is copied file for file; any other MLX model (one
    `model.safetensors` or several `model-*.safetensors`) is loaded and saved again layer by layer.
    Other top-level files (tokenizer, generation config, chat template) are copied as they are.
    """
    if not (source_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{source_dir} is not a model directory: it has no {CONFIG_FILE}")
    if not any(source_dir.glob("model*.safetensors")):
        raise ValueError(f"{source_dir} has no model*.safetensors weight files")
    # Refused here, with the reason, rather than by every shard after placement (retried forever).
    check_supported(read_model_config(source_dir))
    return store.install(model_id, lambda staging: _copy_model(source_dir, staging), replace=replace)


def _copy_model(source_dir: Path, destination: Path) -> None:
    layered = has_layered_layout(source_dir)
    if not layered:
        weights: dict[str, mx.array] = {}
        for weight_file in sorted(source_dir.glob("model*.safetensors")):
            loaded = mx.load(str(weight_file))
            if not isinstance(loaded, dict):
                raise ValueError(f"{weight_file} did not load as a safetensors file")
            weights.update(loaded)
        config = read_model_config(source_dir)
        save_model_directory(destination, config.as_dict(), _sanitized(config, weights))
    for entry in sorted(source_dir.iterdir()):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        # When re-split, the weights and config were just written; everything else travels as it is.
        if layered or not _is_weights_or_config(entry.name):
            shutil.copy2(entry, destination / entry.name)


def _is_weights_or_config(file_name: str) -> bool:
    is_weight_file = file_name.startswith("model") and file_name.endswith(".safetensors")
    return is_weight_file or file_name in (INDEX_FILE, CONFIG_FILE)


_Sanitize = Callable[[dict[str, mx.array]], dict[str, mx.array]]


def _sanitized(config: ModelConfig, weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The weights as the family's mlx-lm `Model.sanitize` turns them, as `mlx_lm.load` does before loading.

    A transformers checkpoint names some tensors otherwise (one tensor per expert, which mlx-lm
    stacks; deepseek's kv_b_proj, split for latent attention; gpt_oss's fused gate and up
    projections); stages load the names mlx-lm's classes have. Idempotent on MLX checkpoints. The
    model is built only for its method: its parameters stay unevaluated, so no memory is taken.
    """
    module_name = mlx_module_of(config.model_type)
    if module_name is None:
        return weights
    module = importlib.import_module(f"mlx_lm.models.{module_name}")
    arguments = cast(Callable[[dict[str, object]], object], module.ModelArgs.from_dict)(config.as_dict())
    model = cast(Callable[[object], object], module.Model)(arguments)
    sanitize = cast(_Sanitize | None, getattr(model, "sanitize", None))
    return weights if sanitize is None else sanitize(weights)
