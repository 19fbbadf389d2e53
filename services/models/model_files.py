"""The on-disk layout of a model in strata, and what can be learnt from it without loading tensors.

A model directory holds `config.json`, tokenizer files and the weights split by responsibility, so a
shard reads only the files of its layer range:

    model-embed.safetensors          model.embed_tokens.*
    model-layer-00000.safetensors    model.layers.0.*   (one file per transformer layer)
    model-head.safetensors           model.norm.*, lm_head.* and anything else not per-layer
    model.safetensors.index.json     {"metadata": {...}, "weight_map": {key: file name}}

Every weight file name starts with `model`, so `mlx_lm.load` (which globs `model*.safetensors`) loads the
whole directory as it is. Layer numbers are global: a shard serving `[start, end)` keeps the keys
`model.layers.{start..end-1}.*` unchanged.

`read_manifest` reads only `config.json` (through `read_model_config`) and the safetensors headers
(8-byte little-endian length, then JSON), so it is cheap enough to call on every start and on every
placement decision.
"""

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict

from services.models.model_config import ModelConfig, read_model_config
from services.models.remote_tensors import RemoteTensors, read_remote_tensors

INDEX_FILE = "model.safetensors.index.json"
EMBED_FILE = "model-embed.safetensors"
HEAD_FILE = "model-head.safetensors"

# Keys such as "model.layers.12.mlp.up_proj.weight"; the prefix before "layers" varies by architecture.
_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBED_KEY = re.compile(r"(?:^|\.)embed_tokens\.")
# The stacked routed experts of mlx-lm's mixtures (SwitchGLU); shared experts are dense.
_ROUTED_EXPERTS_KEY = re.compile(r"\.(?:switch_mlp|experts)\.")
# A safetensors header is JSON; anything this large is a corrupt or foreign file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

WeightGroup = Literal["embed", "head"] | int
"""Which part of the model a tensor belongs to: the embedding, a layer (by global index) or the head."""


class WeightGroupStats(BaseModel):
    """Size of one part of the model."""

    model_config = ConfigDict(frozen=True, strict=True)

    stored_bytes: int
    """Bytes of its tensors on disk (packed quantized data, scales and biases included)."""
    parameter_count: int
    """Logical weights: a quantized matrix counts as its unpacked size; scales and biases do not count."""
    routed_expert_parameter_count: int = 0
    """Of those, the weights of a mixture's routed experts (stacked `switch_mlp` / `experts` tensors),
    of which each token reads only the experts it is routed to."""


class ModelManifest(BaseModel):
    """What placement and loading need to know about a stored model, read without loading tensors."""

    model_config = ConfigDict(frozen=True, strict=True)

    config: ModelConfig
    tie_word_embeddings: bool
    """When true the head multiplies by the embedding matrix, so the last shard needs the embed file."""
    embedding: WeightGroupStats
    layers: tuple[WeightGroupStats, ...]
    """Indexed by global layer number."""
    head: WeightGroupStats
    """The final norm and `lm_head` when the model has one (not the tied embedding)."""

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @property
    def total_stored_bytes(self) -> int:
        return self.embedding.stored_bytes + self.head.stored_bytes + sum(layer.stored_bytes for layer in self.layers)

    @property
    def total_parameter_count(self) -> int:
        return (
            self.embedding.parameter_count
            + self.head.parameter_count
            + sum(layer.parameter_count for layer in self.layers)
        )


def weight_group_of(key: str) -> WeightGroup:
    """The part of the model a tensor key belongs to."""
    if layer_match := _LAYER_KEY.search(key):
        return int(layer_match.group(1))
    if _EMBED_KEY.search(key):
        return "embed"
    return "head"


def weight_file_for_group(group: WeightGroup) -> str:
    """The file name that holds a group's tensors in strata's layout."""
    if group == "embed":
        return EMBED_FILE
    if group == "head":
        return HEAD_FILE
    return f"model-layer-{group:05d}.safetensors"


def read_weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor key -> file name, from the index when present, else from the headers of every weight file."""
    index_path = model_dir / INDEX_FILE
    if index_path.exists():
        loaded: object = json.loads(index_path.read_text())
        weight_map = cast(dict[str, object], loaded).get("weight_map") if isinstance(loaded, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path} has no weight_map object")
        return {str(key): str(file_name) for key, file_name in cast(dict[object, object], weight_map).items()}
    return {
        key: weight_file.name
        for weight_file in sorted(model_dir.glob("model*.safetensors"))
        for key in read_safetensors_header(weight_file)
    }


def has_layered_layout(model_dir: Path) -> bool:
    """Whether the directory's index places every tensor in the file strata's layout assigns it."""
    if not (model_dir / INDEX_FILE).exists():
        return False
    weight_map = read_weight_map(model_dir)
    return bool(weight_map) and all(
        file_name == weight_file_for_group(weight_group_of(key)) for key, file_name in weight_map.items()
    )


def read_safetensors_header(weight_file: Path) -> dict[str, "TensorHeader"]:
    """The tensor entries of a safetensors header, without reading tensor data."""
    with weight_file.open("rb") as stream:
        length_bytes = stream.read(8)
        if len(length_bytes) != 8:
            raise ValueError(f"{weight_file} is too short to be a safetensors file")
        (header_length,) = struct.unpack("<Q", length_bytes)
        if header_length > _MAX_HEADER_BYTES:
            raise ValueError(f"{weight_file} declares a {header_length}-byte header; not a safetensors file")
        header: object = json.loads(stream.read(header_length))
    if not isinstance(header, dict):
        raise ValueError(f"{weight_file} header is not a JSON object")
    entries = cast(dict[str, object], header)
    return {
        key: TensorHeader.from_entry(weight_file, key, entry) for key, entry in entries.items() if key != "__metadata__"
    }


class TensorHeader(BaseModel):
    """One tensor's entry in a safetensors header."""

    model_config = ConfigDict(frozen=True, strict=True)

    dtype: str
    shape: tuple[int, ...]
    stored_bytes: int

    @classmethod
    def from_entry(cls, weight_file: Path, key: str, entry: object) -> "TensorHeader":
        if not isinstance(entry, dict):
            raise ValueError(f"{weight_file}: header entry {key!r} is not an object")
        fields = cast(dict[str, object], entry)
        dtype, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
        if not (isinstance(dtype, str) and isinstance(shape, list) and isinstance(offsets, list)):
            raise ValueError(f"{weight_file}: header entry {key!r} lacks dtype, shape or data_offsets")
        dims = [_as_int(dim, f"{weight_file}: shape of {key!r}") for dim in cast(list[object], shape)]
        start, end = (_as_int(offset, f"{weight_file}: offsets of {key!r}") for offset in cast(list[object], offsets))
        return cls(dtype=dtype, shape=tuple(dims), stored_bytes=end - start)


def read_manifest(model_dir: Path, config: ModelConfig | None = None) -> ModelManifest:
    """Sizes of the model's parts, from config.json (`config` when already parsed) and the safetensors headers."""
    if config is None:
        config = read_model_config(model_dir)
    weight_map = read_weight_map(model_dir)
    headers: dict[str, TensorHeader] = {}
    remote = read_remote_tensors(model_dir)
    for file_name in sorted(set(weight_map.values())):
        if remote is not None and not (model_dir / file_name).is_file():
            # A lazily pulled model: its weight files are fetched from the Hub by the shards that need them.
            headers.update(_remote_headers(remote, weight_map, file_name))
        else:
            headers.update(read_safetensors_header(model_dir / file_name))
    missing = sorted(set(weight_map) - set(headers))
    if missing:
        raise ValueError(f"{model_dir}: the index names tensors absent from the weight files: {missing[:5]}")
    return manifest_from_headers(config, weight_map, headers)


def manifest_from_headers(
    config: ModelConfig, weight_map: Mapping[str, str], headers: Mapping[str, "TensorHeader"]
) -> ModelManifest:
    """Sizes of the model's parts from its config and every tensor's header (wherever the files are)."""
    num_layers = config.num_layers
    stored: dict[WeightGroup, int] = {}
    parameters: dict[WeightGroup, int] = {}
    routed: dict[WeightGroup, int] = {}
    for key, header in headers.items():
        group = weight_group_of(key)
        count = _parameter_count(key, header, headers, config)
        stored[group] = stored.get(group, 0) + header.stored_bytes
        parameters[group] = parameters.get(group, 0) + count
        if config.experts is not None and _ROUTED_EXPERTS_KEY.search(key):
            routed[group] = routed.get(group, 0) + count

    def stats(group: WeightGroup) -> WeightGroupStats:
        return WeightGroupStats(
            stored_bytes=stored.get(group, 0),
            parameter_count=parameters.get(group, 0),
            routed_expert_parameter_count=routed.get(group, 0),
        )

    return ModelManifest(
        config=config,
        tie_word_embeddings=_ties_word_embeddings(config, weight_map),
        embedding=stats("embed"),
        layers=tuple(stats(layer) for layer in range(num_layers)),
        head=stats("head"),
    )


def weight_files_for_stage(
    model_dir: Path, start_layer: int, end_layer: int, config: ModelConfig | None = None
) -> list[Path]:
    """The weight files a shard serving global layers `[start_layer, end_layer)` must read.

    Its layer files; the embedding when it is the first stage; the head when it is the last, and the
    embedding too when the head is tied to it. Ordered embed, layers, head. `config`: the model's,
    when the caller has already parsed it.
    """
    if config is None:
        config = read_model_config(model_dir)
    num_layers = config.num_layers
    if not 0 <= start_layer < end_layer <= num_layers:
        raise ValueError(f"stage [{start_layer}, {end_layer}) is not a non-empty range of {num_layers} layers")
    weight_map = read_weight_map(model_dir)
    is_last = end_layer == num_layers
    wants_embed = start_layer == 0 or (is_last and _ties_word_embeddings(config, weight_map))

    def needed(group: WeightGroup) -> bool:
        if group == "embed":
            return wants_embed
        if group == "head":
            return is_last
        return start_layer <= group < end_layer

    def order(group: WeightGroup) -> float:
        return -1 if group == "embed" else math.inf if group == "head" else group

    files: dict[str, float] = {}
    for key, file_name in weight_map.items():
        group = weight_group_of(key)
        if needed(group):
            files[file_name] = min(files.get(file_name, math.inf), order(group))
    return [model_dir / name for name in sorted(files, key=lambda name: (files[name], name))]


def _remote_headers(remote: RemoteTensors, weight_map: Mapping[str, str], file_name: str) -> dict[str, TensorHeader]:
    return {
        key: TensorHeader(dtype=tensor.dtype, shape=tensor.shape, stored_bytes=tensor.stored_bytes)
        for key, tensor in remote.tensors.items()
        if weight_map.get(key) == file_name
    }


def _parameter_count(key: str, header: TensorHeader, headers: Mapping[str, TensorHeader], config: ModelConfig) -> int:
    """Logical weights in one tensor; quantization scales and biases count as zero."""
    module_path, _, leaf = key.rpartition(".")
    scales = headers.get(f"{module_path}.scales")
    if scales is None:
        return math.prod(header.shape)
    if leaf in ("scales", "biases"):
        return 0
    return math.prod(scales.shape) * _group_size(module_path, config)


def _group_size(module_path: str, config: ModelConfig) -> int:
    if config.quantization is None:
        raise ValueError(f"{module_path} is quantized but {config.source} has no quantization settings")
    return config.quantization.group_size_of(module_path)


def _ties_word_embeddings(config: ModelConfig, weight_map: Iterable[str]) -> bool:
    # Absent from config: tied exactly when there is no separate head matrix to use.
    if config.tie_word_embeddings is None:
        return not any(key.startswith("lm_head.") for key in weight_map)
    return config.tie_word_embeddings


def _as_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} is {value!r}, not an integer")
    return value


def write_json(path: Path, content: object) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
