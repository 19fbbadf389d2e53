"""`strata models pull REPO --lazy`: a model stored without its weights, each tensor found on the Hub.

The pulling host reads every safetensors file's header by two small range reads, then streams each
file once (never to disk): the whole file's sha256 must equal the Hub listing's LFS sha256, and each
tensor's sha256 is recorded as its bytes pass. The store gets the config, tokenizer and chat template
files, strata's layered index (`model-layer-NNNNN.safetensors` names, as `import --dir` would write)
and the manifest (`services.models.remote_tensors`); the weight files themselves are made later, by the
shards that serve them (`services.models.hub_range_fetch`).
"""

import hashlib
import json
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from services.kernel.ids import ModelId
from services.models.hub_http import file_url, progress_bar, read_range, stream_from
from services.models.model_config import CONFIG_FILE, read_model_config
from services.models.model_files import (
    INDEX_FILE,
    TensorHeader,
    weight_file_for_group,
    weight_group_of,
    write_json,
)
from services.models.model_store import ModelStore
from services.models.pull_errors import PullError
from services.models.remote_tensors import RemoteTensor, RemoteTensors, write_remote_tensors

_MAX_HEADER_BYTES = 100 * 1024 * 1024
"""As `model_files`: a safetensors header this large is a corrupt or foreign file."""


@dataclass(frozen=True)
class TensorPlace:
    """Where a tensor's bytes are in its Hub file, from the header alone."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class WeightFile:
    """A Hub safetensors file to stream: its name, size and LFS sha256 from the listing."""

    name: str
    size: int
    sha256: str


def read_hub_header(url: str, file_name: str, size: int, token: str | None = None) -> dict[str, TensorPlace]:
    """The tensors of a Hub safetensors file, by two range reads (the length, then the header)."""
    length_bytes = bytearray()
    read_range(url, 0, 8, length_bytes.extend, token=token)
    (header_length,) = struct.unpack("<Q", bytes(length_bytes))
    if header_length > min(_MAX_HEADER_BYTES, size - 8):
        raise PullError(f"{file_name} declares a {header_length}-byte header: not a safetensors file")
    header = bytearray()
    read_range(url, 8, 8 + header_length, header.extend, token=token)
    return parse_header(file_name, bytes(header), size)


def parse_header(file_name: str, header: bytes, size: int) -> dict[str, TensorPlace]:
    """Each tensor's absolute byte range in the file; raises PullError for a malformed header."""
    try:
        loaded: object = json.loads(header)
    except ValueError as error:
        raise PullError(f"{file_name}: its safetensors header is not JSON: {error}") from error
    if not isinstance(loaded, dict):
        raise PullError(f"{file_name}: its safetensors header is not a JSON object")
    data_start = 8 + len(header)
    places: dict[str, TensorPlace] = {}
    for key, entry in cast(dict[str, object], loaded).items():
        if key == "__metadata__":
            continue
        try:
            checked = TensorHeader.from_entry(Path(file_name), key, entry)
        except ValueError as error:
            raise PullError(str(error)) from error
        offsets = cast(list[int], cast(dict[str, object], entry)["data_offsets"])
        start, end = data_start + offsets[0], data_start + offsets[1]
        if not data_start <= start <= end <= size or end - start != checked.stored_bytes:
            raise PullError(f"{file_name}: tensor {key!r} lies outside the file ({start}-{end} of {size} bytes)")
        places[key] = TensorPlace(dtype=checked.dtype, shape=checked.shape, start=start, end=end)
    return places


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def _sha256() -> _Digest:
    return hashlib.sha256()


@dataclass
class TensorDigests:
    """sha256 of a file and of each tensor in it, fed the file's bytes in order (any chunking)."""

    places: Mapping[str, TensorPlace]
    position: int = 0
    whole: "_Digest" = field(default_factory=_sha256)
    _ordered: list[tuple[str, TensorPlace]] = field(default_factory=list[tuple[str, TensorPlace]])
    _digests: dict[str, "_Digest"] = field(default_factory=dict[str, "_Digest"])
    _next: int = 0

    def __post_init__(self) -> None:
        self._ordered = sorted(self.places.items(), key=lambda item: (item[1].start, item[1].end))
        self._digests = {key: _sha256() for key in self.places}

    def feed(self, chunk: bytes) -> None:
        self.whole.update(chunk)
        chunk_start, chunk_end = self.position, self.position + len(chunk)
        index = self._next
        while index < len(self._ordered):
            key, place = self._ordered[index]
            if place.start >= chunk_end:
                break
            low, high = max(place.start, chunk_start), min(place.end, chunk_end)
            if low < high:
                self._digests[key].update(chunk[low - chunk_start : high - chunk_start])
            if place.end <= chunk_end:
                index += 1  # done with this tensor; later chunks start past it
                self._next = index
            else:
                break
        self.position = chunk_end

    def tensor_sha256(self, key: str) -> str:
        return self._digests[key].hexdigest()


def store_lazily(
    store: ModelStore,
    model_id: ModelId,
    where: str,
    repo_id: str,
    commit: str,
    download_dir: Path,
    weight_files: Sequence[WeightFile],
    *,
    endpoint: str | None,
    replace: bool,
    headers: Callable[[WeightFile], dict[str, TensorPlace]] | None = None,
) -> Path:
    """Streams every weight file once (checked), then installs the metadata of `download_dir` with the
    layered index and the tensor manifest; returns the model's folder. `headers`: the files' headers
    when already read (else read here). Raises PullError for a corrupted file or a model with holes."""
    config = read_model_config(download_dir)
    tensors: dict[str, RemoteTensor] = {}
    for weight_file in weight_files:
        url = file_url(repo_id, weight_file.name, commit, endpoint)
        places = headers(weight_file) if headers else read_hub_header(url, weight_file.name, weight_file.size)
        digests = TensorDigests(places)
        with progress_bar(f"{weight_file.name} (checking)", weight_file.size, 0) as progress:

            def feed(chunk: bytes, digests: TensorDigests = digests) -> None:
                digests.feed(chunk)
                progress.update(len(chunk))

            stream_from(url, 0, weight_file.size, feed)
        if (actual := digests.whole.hexdigest()) != weight_file.sha256:
            raise PullError(
                f"{where}: {weight_file.name} is corrupted (sha256 {actual}, the Hub lists {weight_file.sha256}); "
                "nothing was stored"
            )
        for key, place in places.items():
            if key in tensors:
                raise PullError(f"{where}: tensor {key!r} is in {tensors[key].hub_file} and {weight_file.name}")
            tensors[key] = RemoteTensor(
                hub_file=weight_file.name,
                dtype=place.dtype,
                shape=place.shape,
                start=place.start,
                end=place.end,
                sha256=digests.tensor_sha256(key),
            )
    weight_map = {key: weight_file_for_group(weight_group_of(key)) for key in sorted(tensors)}
    layers = {group for group in map(weight_group_of, tensors) if isinstance(group, int)}
    if missing := [layer for layer in range(config.num_layers) if layer not in layers]:
        raise PullError(f"{where}: config declares {config.num_layers} layers but layers {missing} have no weights")
    manifest = RemoteTensors(repo_id=repo_id, commit=commit, endpoint=endpoint, tensors=tensors)
    index = {
        "metadata": {
            "format": "strata-layered",
            "num_layers": config.num_layers,
            "total_size": sum(tensor.stored_bytes for tensor in tensors.values()),
            "weights": "hub",  # absent here: fetched from the Hub by the shards (hub-tensors.json)
        },
        "weight_map": weight_map,
    }

    def build(staging: Path) -> None:
        for entry in sorted(download_dir.iterdir()):
            # The Hub's index names its own files; ours replaces it.
            if entry.is_file() and not entry.name.startswith(".") and _is_metadata(entry.name):
                shutil.copy2(entry, staging / entry.name)
        write_json(staging / INDEX_FILE, index)
        write_remote_tensors(staging, manifest)
        if not (staging / CONFIG_FILE).is_file():
            raise PullError(f"{where}: {CONFIG_FILE} is missing from the download")

    return store.install(model_id, build, replace=replace)


def _is_metadata(file_name: str) -> bool:
    return not file_name.endswith(".safetensors") and file_name != INDEX_FILE
