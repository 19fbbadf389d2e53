"""Tiny models laid out as Hub repositories (for `tests/services/fake_hub.py`), and what their headers say."""

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx

from tests.gateway.tiny_tokenizer import build_model_directory
from tests.tiny_architectures import build_tiny_model

SHARDED_REPO = "TinyOrg/Tiny-Llama-Sharded"
HUB_FILES = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def sharded_hub_repository(tmp_path: Path, repo_id: str = SHARDED_REPO) -> Path:
    """A tiny llama as transformers shards a checkpoint: two safetensors files (layers split across
    them, in no layer order), their index, config and tokenizer. Returns the layered original's folder."""
    layered = build_tiny_model("llama", tmp_path / "layered")
    repository = tmp_path / "hub" / repo_id
    repository.mkdir(parents=True)
    weights: dict[str, mx.array] = {}
    for weight_file in sorted(layered.glob("*.safetensors")):
        loaded = mx.load(str(weight_file))
        assert isinstance(loaded, dict)
        weights.update(loaded)
    keys = sorted(weights)
    halves = (keys[0::2], keys[1::2])  # every file holds parts of every layer
    save = cast(Callable[[str, dict[str, mx.array], dict[str, str]], None], mx.__dict__["save_safetensors"])
    weight_map: dict[str, str] = {}
    for name, half in zip(HUB_FILES, halves, strict=True):
        save(str(repository / name), {key: weights[key] for key in half}, {"format": "mlx"})
        weight_map |= dict.fromkeys(half, name)
    (repository / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(layered / "config.json", repository / "config.json")
    tokenizer = build_model_directory(tmp_path / "tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, repository / name)
    return layered


def tensor_ranges(hub_file: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's absolute [start, end) in a safetensors file, read from its header."""
    data = hub_file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = cast(dict[str, dict[str, list[int]]], json.loads(data[8 : 8 + length]))
    return {
        key: (8 + length + entry["data_offsets"][0], 8 + length + entry["data_offsets"][1])
        for key, entry in header.items()
        if key != "__metadata__"
    }
