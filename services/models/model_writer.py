"""Writing a model directory in strata's layout (config, weight index, one weight file per group)."""

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import mlx.core as mx

from services.models.model_config import CONFIG_FILE, parse_model_config
from services.models.model_files import (
    INDEX_FILE,
    WeightGroup,
    weight_file_for_group,
    weight_group_of,
    write_json,
)


def save_model_directory(destination: Path, config: Mapping[str, object], weights: Mapping[str, mx.array]) -> None:
    """Write `config` and `weights` into `destination` in strata's layout.

    Raises FileExistsError when `destination` already holds weight files (mlx-lm would load them too),
    ModelConfigError (a ValueError) when `config` would not parse, and ValueError when a layer below
    `config["num_hidden_layers"]` has no weights.
    """
    destination.mkdir(parents=True, exist_ok=True)
    stale_files = sorted(destination.glob("model*.safetensors")) + sorted(destination.glob(INDEX_FILE))
    if stale_files:
        raise FileExistsError(f"{destination} already holds weight files: {[p.name for p in stale_files]}")
    # Parsed as every reader will parse it, so no directory is written that the store would refuse.
    num_layers = parse_model_config(json.loads(json.dumps(dict(config))), destination / CONFIG_FILE).num_layers
    groups: dict[WeightGroup, dict[str, mx.array]] = {}
    for key in sorted(weights):
        groups.setdefault(weight_group_of(key), {})[key] = weights[key]
    missing_layers = [layer for layer in range(num_layers) if layer not in groups]
    if missing_layers:
        raise ValueError(f"config declares {num_layers} layers but layers {missing_layers} have no weights")

    weight_map: dict[str, str] = {}
    for group, tensors in groups.items():
        file_name = weight_file_for_group(group)
        _save_safetensors(str(destination / file_name), tensors, {"format": "mlx"})
        weight_map.update(dict.fromkeys(tensors, file_name))

    write_json(destination / CONFIG_FILE, dict(config))
    index = {
        "metadata": {
            "format": "strata-layered",
            "num_layers": num_layers,
            "total_size": sum(array.nbytes for array in weights.values()),
        },
        "weight_map": dict(sorted(weight_map.items())),
    }
    write_json(destination / INDEX_FILE, index)


def _save_safetensors(path: str, tensors: dict[str, mx.array], metadata: dict[str, str]) -> None:
    # mlx's stub leaves save_safetensors' return type out, which strict checking rejects on access.
    save = cast(Callable[[str, dict[str, mx.array], dict[str, str]], None], mx.__dict__["save_safetensors"])
    save(path, tensors, metadata)
