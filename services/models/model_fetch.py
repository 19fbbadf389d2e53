"""Fetch model files a host lacks from a peer's `ModelFiles` service.

Files land in the model's directory in the local store: each is received into a hidden
`.NAME.partial` file (resumed from its length after an interruption), checked against the sender's
sha256, flushed, then renamed into place, so a visible file is always complete and verified.
Only the files asked for travel: a shard asks for the metadata (config, index, tokenizer: every file
that is not `model*.safetensors`) and the weight files of its layers; a gateway for the metadata only.
A lazily pulled model (`hub-tensors.json` among its metadata) may have no peer holding a weight file:
each file no peer has is rebuilt from the Hub by range reads of its tensors (`hub_range_fetch`).
`ModelFetcher.fetched` counts the bytes received, from peers and from the Hub.
"""

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from huggingface_hub.errors import HfHubHTTPError

from services.kernel.ids import ModelId
from services.models.hub_range_fetch import TensorCheckError, fetch_weight_file
from services.models.model_file_service import sha256_of
from services.models.model_files import read_weight_map, weight_files_for_stage
from services.models.model_store import ModelStore
from services.models.remote_tensors import RemoteTensors, read_remote_tensors
from services.platform.grpc_server import cluster_channel
from strata_wire import model_transfer_pb2, model_transfer_pb2_grpc

logger = logging.getLogger(__name__)

LIST_TIMEOUT_SECONDS = 120.0
FILE_TIMEOUT_SECONDS = 600.0
"""A file that takes longer is resumed by the next attempt from what arrived."""
ATTEMPTS_PER_FILE = 3


class FetchError(Exception):
    """No source could provide the files."""


@dataclass
class FetchedBytes:
    """Bytes this process received for model files since it started."""

    from_peers: int = 0
    """File bytes streamed from peers' `ModelFiles` services."""
    from_hub: int = 0
    """Tensor bytes read from the Hub by range requests."""


Chooser = Callable[[list[str]], list[str]]
"""Given the names a source lists, the names to fetch; raises FetchError when the source lacks some."""


def _metadata_files(listing: list[str]) -> list[str]:
    return [name for name in listing if not is_weight_file(name)]


def _those_listed(names: list[str]) -> Chooser:
    def choose(listing: list[str]) -> list[str]:
        return [name for name in names if name in listing]

    return choose


def _these_files(names: list[str]) -> Chooser:
    def choose(listing: list[str]) -> list[str]:
        absent = [name for name in names if name not in listing]
        if absent:
            raise FetchError(f"the source lacks {', '.join(absent)}")
        return names

    return choose


def is_weight_file(name: str) -> bool:
    return name.startswith("model") and name.endswith(".safetensors")


def missing_stage_files(model_dir: Path, start_layer: int, end_layer: int) -> list[str] | None:
    """Weight files the stage needs that are absent, or None when the metadata itself is missing."""
    try:
        needed = weight_files_for_stage(model_dir, start_layer, end_layer)
    except (OSError, ValueError):
        return None
    return [path.name for path in needed if not path.is_file()]


def partial_path(model_dir: Path, name: str) -> Path:
    return model_dir / f".{name}.partial"


class ModelFetcher:
    """Fetches files of one store from the first source that has them; one fetch per model at a time."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store
        self._locks: dict[ModelId, asyncio.Lock] = {}
        self.fetched = FetchedBytes()

    async def ensure_metadata(self, model_id: ModelId, sources: Sequence[str]) -> None:
        """Config, index and tokenizer files present (fetched when absent); raises FetchError."""
        async with self._locks.setdefault(model_id, asyncio.Lock()):
            # The index arrives last, so a model with config and index has all its metadata.
            if self._store.has_model(model_id):
                return
            await self._fetch(model_id, sources, _metadata_files)

    async def ensure_stage(self, model_id: ModelId, start_layer: int, end_layer: int, sources: Sequence[str]) -> None:
        """Every file a shard serving `[start_layer, end_layer)` reads is present; raises FetchError."""
        model_dir = self._store.model_dir(model_id)
        if missing_stage_files(model_dir, start_layer, end_layer) == []:
            return
        await self.ensure_metadata(model_id, sources)
        async with self._locks.setdefault(model_id, asyncio.Lock()):
            missing = missing_stage_files(model_dir, start_layer, end_layer)
            if missing is None:
                raise FetchError(f"model {model_id!r} metadata is unreadable after fetching it")
            if not missing:
                return
            manifest = read_remote_tensors(model_dir)
            if manifest is None:
                await self._fetch(model_id, sources, _these_files(missing))
            else:
                await self._fetch_with_hub(model_id, sources, missing, manifest)

    async def _fetch_with_hub(
        self, model_id: ModelId, sources: Sequence[str], missing: list[str], manifest: RemoteTensors
    ) -> None:
        """Each file from a peer that holds it, else from the Hub; raises FetchError."""
        model_dir = self._store.model_dir(model_id)
        async with _store_lock(self._store, model_id):
            for source in sources:
                missing = [name for name in missing if not (model_dir / name).is_file()]
                if not missing:
                    return
                try:
                    await self._fetch_from(model_id, source, _those_listed(missing))
                except (grpc.aio.AioRpcError, FetchError, OSError) as error:
                    detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
                    logger.info("peer %s did not give %s: %s", source, model_id, detail)
            missing = [name for name in missing if not (model_dir / name).is_file()]
            weight_map = read_weight_map(model_dir)
            for name in missing:
                where = f"{manifest.repo_id}@{manifest.commit[:12]}"
                try:
                    fetched = await asyncio.to_thread(
                        fetch_weight_file, model_dir, name, weight_map, manifest, partial_path(model_dir, name)
                    )
                except TensorCheckError as error:
                    raise FetchError(f"{name} of {model_id!r}: {error}") from error
                except (OSError, ValueError, HfHubHTTPError) as error:
                    raise FetchError(
                        f"could not read {name} of {model_id!r} from the Hub ({where}): {error}"
                    ) from error
                self.fetched.from_hub += fetched
                logger.info(
                    "read %s of %s from the Hub (%s): %d bytes by range requests", name, model_id, where, fetched
                )

    async def _fetch(self, model_id: ModelId, sources: Sequence[str], choose: Chooser) -> None:
        if not sources:
            raise FetchError(f"model {model_id!r} is not here and no peer is known to have it")
        problems: list[str] = []
        async with _store_lock(self._store, model_id):
            for source in sources:
                try:
                    await self._fetch_from(model_id, source, choose)
                    return
                except (grpc.aio.AioRpcError, FetchError, OSError) as error:
                    detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
                    logger.warning("fetching %s from %s failed: %s", model_id, source, detail)
                    problems.append(f"{source}: {detail}")
        raise FetchError(f"could not fetch model {model_id!r}: {'; '.join(problems)}")

    async def _fetch_from(self, model_id: ModelId, source: str, choose: Chooser) -> None:
        async with cluster_channel(source) as channel:
            stub = model_transfer_pb2_grpc.ModelFilesStub(channel)
            listing = await stub.ListModelFiles(
                model_transfer_pb2.ListModelFilesRequest(model_id=model_id), timeout=LIST_TIMEOUT_SECONDS
            )
            files = {file.name: file for file in listing.files if file.name and "/" not in file.name}
            wanted = choose(list(files))
            model_dir = self._store.model_dir(model_id)
            model_dir.mkdir(parents=True, exist_ok=True)
            for name in sorted(wanted, key=lambda name: name == "model.safetensors.index.json"):
                file = files[name]
                if (model_dir / name).is_file() and (model_dir / name).stat().st_size == file.size_bytes:
                    continue
                await self._fetch_file(stub, model_id, model_dir, file)
            logger.info("fetched %d files of %s from %s", len(wanted), model_id, source)

    async def _fetch_file(
        self,
        stub: "model_transfer_pb2_grpc.ModelFilesAsyncStub",
        model_id: ModelId,
        model_dir: Path,
        file: model_transfer_pb2.ModelFile,
    ) -> None:
        partial = partial_path(model_dir, file.name)
        for attempt in range(1, ATTEMPTS_PER_FILE + 1):
            offset = partial.stat().st_size if partial.is_file() else 0
            if offset > file.size_bytes:
                partial.unlink()
                offset = 0
            if offset < file.size_bytes:
                await self._receive(stub, model_id, file.name, partial, offset)
            if await asyncio.to_thread(sha256_of, partial) == file.sha256:
                _publish(partial, model_dir / file.name)
                return
            logger.warning("checksum mismatch for %s of %s (attempt %d); refetching", file.name, model_id, attempt)
            partial.unlink()
        raise FetchError(f"{file.name} of {model_id!r} failed its checksum {ATTEMPTS_PER_FILE} times")

    async def _receive(
        self,
        stub: "model_transfer_pb2_grpc.ModelFilesAsyncStub",
        model_id: ModelId,
        name: str,
        partial: Path,
        offset: int,
    ) -> None:
        request = model_transfer_pb2.ReadModelFileRequest(model_id=model_id, name=name, offset=offset)
        with partial.open("ab") as output:
            async for chunk in stub.ReadModelFile(request, timeout=FILE_TIMEOUT_SECONDS):
                if chunk.offset != offset:
                    raise FetchError(f"{name}: chunk at {chunk.offset}, expected {offset}")
                output.write(chunk.data)
                offset += len(chunk.data)
                self.fetched.from_peers += len(chunk.data)
            output.flush()
            os.fsync(output.fileno())


@contextlib.asynccontextmanager
async def _store_lock(store: ModelStore, model_id: ModelId) -> AsyncGenerator[None]:
    """Excludes other processes of this host (a gateway and a shard sharing $STRATA_HOME) fetching the
    same model into the same folder: an advisory lock file beside the model directories."""
    store.root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(store.root / f".{model_id}.fetch-lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _publish(partial: Path, final: Path) -> None:
    partial.replace(final)
    descriptor = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
