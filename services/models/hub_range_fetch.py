"""A weight file of a lazily pulled model, rebuilt from the Hub by HTTP range reads of its tensors.

strata's layout puts each layer in a file of its own (`model_files`); the Hub's files mix layers. For a
file the stage needs, this reads exactly the bytes of the tensors strata's index assigns to it (adjacent
tensors of one Hub file in one range request, never a whole file), checks each tensor against the
sha256 the pulling host recorded (`remote_tensors`), and writes a safetensors file with those tensors
as they are (same keys, dtypes, shapes and bytes) into a hidden partial file, renamed into place only
when every tensor passed. Synchronous (blocking network and disk): callers run it in a thread.
"""

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.models.hub_http import file_url, read_range
from services.models.remote_tensors import RemoteTensor, RemoteTensors

HEADER_ALIGNMENT = 8
"""The safetensors header is padded with spaces so the data section starts 8-byte aligned."""


class TensorCheckError(Exception):
    """A tensor read from the Hub differs from the manifest's sha256; the file was not written."""


@dataclass(frozen=True)
class ByteRun:
    """Adjacent tensors of one Hub file, read with one range request."""

    hub_file: str
    start: int
    end: int
    keys: tuple[str, ...]


def byte_runs(tensors: Mapping[str, RemoteTensor]) -> list[ByteRun]:
    """The tensors grouped into runs of contiguous bytes per Hub file, in file order. Pure."""
    ordered = sorted(tensors.items(), key=lambda item: (item[1].hub_file, item[1].start))
    runs: list[ByteRun] = []
    for key, tensor in ordered:
        last = runs[-1] if runs else None
        if last is not None and last.hub_file == tensor.hub_file and last.end == tensor.start:
            runs[-1] = ByteRun(last.hub_file, last.start, tensor.end, (*last.keys, key))
        else:
            runs.append(ByteRun(tensor.hub_file, tensor.start, tensor.end, (key,)))
    return runs


def safetensors_header(tensors: Mapping[str, RemoteTensor], order: list[str]) -> bytes:
    """The 8-byte length and JSON header of a file holding `order`'s tensors back to back."""
    entries: dict[str, object] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for key in order:
        tensor = tensors[key]
        entries[key] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.stored_bytes],
        }
        offset += tensor.stored_bytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(header)) + header


def fetch_weight_file(
    model_dir: Path,
    file_name: str,
    weight_map: Mapping[str, str],
    manifest: RemoteTensors,
    partial: Path,
    *,
    token: str | None = None,
) -> int:
    """Writes `model_dir/file_name` from the Hub; returns the tensor bytes read.

    Raises TensorCheckError for a tensor whose bytes differ from the manifest (nothing is written),
    ValueError when the manifest lacks a tensor of the file, and OSError / huggingface_hub's HTTP
    errors when the Hub cannot be read.
    """
    keys = sorted(key for key, name in weight_map.items() if name == file_name)
    if absent := [key for key in keys if key not in manifest.tensors]:
        raise ValueError(f"{file_name}: the tensor manifest lacks {', '.join(absent[:5])}")
    tensors = {key: manifest.tensors[key] for key in keys}
    runs = byte_runs(tensors)
    order = [key for run in runs for key in run.keys]
    fetched = 0
    try:
        with partial.open("wb") as output:
            output.write(safetensors_header(tensors, order))
            for run in runs:
                fetched += _read_run(output, run, tensors, manifest, token)
            output.flush()
            os.fsync(output.fileno())
        partial.replace(model_dir / file_name)
    finally:
        partial.unlink(missing_ok=True)
    return fetched


def _read_run(
    output: BinaryIO, run: ByteRun, tensors: Mapping[str, RemoteTensor], manifest: RemoteTensors, token: str | None
) -> int:
    """Copies one run's bytes to `output`, hashing each tensor as it passes; raises TensorCheckError."""
    url = file_url(manifest.repo_id, run.hub_file, manifest.commit, manifest.endpoint)
    digests = {key: hashlib.sha256() for key in run.keys}
    position = run.start

    def consume(chunk: bytes) -> None:
        nonlocal position
        output.write(chunk)
        chunk_end = position + len(chunk)
        for key in run.keys:
            tensor = tensors[key]
            low, high = max(tensor.start, position), min(tensor.end, chunk_end)
            if low < high:
                digests[key].update(chunk[low - position : high - position])
        position = chunk_end

    read_range(url, run.start, run.end, consume, token=token)
    for key in run.keys:
        tensor = tensors[key]
        if (actual := digests[key].hexdigest()) != tensor.sha256:
            raise TensorCheckError(
                f"tensor {key!r} read from {manifest.repo_id}@{manifest.commit[:12]}/{tensor.hub_file} "
                f"(bytes {tensor.start}-{tensor.end - 1}) has sha256 {actual}, the pull recorded {tensor.sha256}: "
                "refused, not used"
            )
    return run.end - run.start
