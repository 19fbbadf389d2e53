"""The `ModelFiles` gRPC service: sends the files of models in this host's store to peers that lack them.

Only plain files directly inside a model directory are listed and served (never hidden or partial files,
never a path outside the directory). Checksums are computed off the event loop and cached per file
size and modification time. What is not in the store is refused with `NotFoundError` (NOT_FOUND), an
offset past the end with `OutOfRangeError`, answered by the server's status interceptor.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from services.kernel.ids import ModelId
from services.kernel.status_errors import NotFoundError, OutOfRangeError
from services.models.model_store import ModelStore, parse_model_id
from strata_wire import model_transfer_pb2, model_transfer_pb2_grpc

MODEL_FILES_SERVICE_NAME = model_transfer_pb2.DESCRIPTOR.services_by_name["ModelFiles"].full_name
CHUNK_BYTES = 1024 * 1024
HASH_BLOCK_BYTES = 4 * 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def servable_files(model_dir: Path) -> list[Path]:
    """The files of a model directory a peer may fetch, sorted by name."""
    if not model_dir.is_dir():
        return []
    return sorted(entry for entry in model_dir.iterdir() if entry.is_file() and not entry.name.startswith("."))


class ModelFileService(model_transfer_pb2_grpc.ModelFilesServicer):
    def __init__(self, store: ModelStore) -> None:
        self._store = store
        self._checksums: dict[tuple[Path, int, int], str] = {}

    def _model_dir(self, model_id: str) -> Path | None:
        try:
            parsed = parse_model_id(model_id)
        except ValueError:
            return None
        return self._store.model_dir(ModelId(parsed)) if self._store.has_model(parsed) else None

    async def _checksum(self, path: Path) -> str:
        status = await asyncio.to_thread(path.stat)
        key = (path, status.st_size, status.st_mtime_ns)
        cached = self._checksums.get(key)
        if cached is None:
            cached = await asyncio.to_thread(sha256_of, path)
            self._checksums[key] = cached
        return cached

    async def ListModelFiles(
        self, request: model_transfer_pb2.ListModelFilesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> model_transfer_pb2.ModelFileList:
        model_dir = self._model_dir(request.model_id)
        if model_dir is None:
            raise NotFoundError(f"model {request.model_id!r} is not in this store")
        files = [
            model_transfer_pb2.ModelFile(
                name=path.name, size_bytes=path.stat().st_size, sha256=await self._checksum(path)
            )
            for path in servable_files(model_dir)
        ]
        return model_transfer_pb2.ModelFileList(model_id=request.model_id, files=files)

    async def ReadModelFile(
        self, request: model_transfer_pb2.ReadModelFileRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[model_transfer_pb2.FileChunk]:
        model_dir = self._model_dir(request.model_id)
        path = (
            next((file for file in servable_files(model_dir) if file.name == request.name), None) if model_dir else None
        )
        if path is None:
            raise NotFoundError(f"file {request.name!r} of model {request.model_id!r} is not in this store")
        size = path.stat().st_size
        if not 0 <= request.offset <= size:
            raise OutOfRangeError(f"offset {request.offset} is outside 0..{size}")
        offset = request.offset
        with path.open("rb") as stream:
            stream.seek(offset)
            while offset < size:
                data = await asyncio.to_thread(stream.read, CHUNK_BYTES)
                if not data:
                    break
                yield model_transfer_pb2.FileChunk(offset=offset, data=data)
                offset += len(data)


def add_model_file_service(server: grpc.aio.Server, store: ModelStore) -> None:
    model_transfer_pb2_grpc.add_ModelFilesServicer_to_server(ModelFileService(store), server)
