"""A lazily pulled model's tensors: where each one lies in the Hub's files, and its sha256.

`strata models pull REPO --lazy` stores a model's config, tokenizer and strata-layout index without its
weight files, and this manifest (`hub-tensors.json`) beside them. A shard that lacks a weight file of
its stage (and finds no peer holding it) rebuilds exactly that file from the Hub by HTTP range reads of
the tensors it contains (`services.models.hub_range_fetch`).

Integrity: the Hub's etag and LFS sha256 cover whole files, not ranges. The pulling host streams every
safetensors file once, checks the file's sha256 against the Hub's listing, and records each tensor's
sha256 here while the bytes pass (nothing is stored but the manifest). A shard checks every range it
reads against that hash and refuses a tensor that differs. The manifest itself travels between hosts
over the sha256-checked `ModelFiles` RPCs like any metadata file.

Pure: no network, no MLX (the coordinator reads it for placement).
"""

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

REMOTE_TENSORS_FILE = "hub-tensors.json"
MANIFEST_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)


class RemoteTensor(_Frozen):
    """One tensor of a Hub safetensors file."""

    hub_file: str
    """The repository's file that holds it (`model.safetensors`, `model-00001-of-00002.safetensors`)."""
    dtype: str
    shape: tuple[int, ...]
    start: int
    """First byte in the Hub file (8-byte length + header + its data offset)."""
    end: int
    """One past its last byte in the Hub file."""
    sha256: str

    @property
    def stored_bytes(self) -> int:
        return self.end - self.start


class RemoteTensors(_Frozen):
    """Where a lazily pulled model's tensors are on the Hub, at one commit."""

    version: int = MANIFEST_VERSION
    repo_id: str
    commit: str
    endpoint: str | None
    """The Hub (or mirror) it was pulled from; None: huggingface_hub's default (HF_ENDPOINT)."""
    tensors: dict[str, RemoteTensor]
    """By tensor key (the key strata's index and safetensors files use)."""


def read_remote_tensors(model_dir: Path) -> RemoteTensors | None:
    """The model's manifest, or None for a model whose weights were pulled or imported whole."""
    path = model_dir / REMOTE_TENSORS_FILE
    if not path.is_file():
        return None
    try:
        return RemoteTensors.model_validate_json(path.read_bytes())
    except ValueError as error:
        raise ValueError(f"{path} is not a valid tensor manifest: {error}") from error


def write_remote_tensors(model_dir: Path, manifest: RemoteTensors) -> None:
    content = manifest.model_dump(mode="json")
    (model_dir / REMOTE_TENSORS_FILE).write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
