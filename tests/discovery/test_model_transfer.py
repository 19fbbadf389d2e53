"""Model files over real gRPC (in-process server on 127.0.0.1): only the files a stage needs travel,
checksums are verified, an interrupted transfer resumes, a corrupt partial file is refetched."""

import asyncio
from pathlib import Path

import pytest

from discovery.peer_source import DiscoveryOptions
from gateway.presence import GatewayPresence
from services.kernel.ids import ModelId, NodeId
from services.models.model_config import CONFIG_FILE, read_model_config
from services.models.model_fetch import FetchError, ModelFetcher, partial_path
from services.models.model_file_service import MODEL_FILES_SERVICE_NAME, add_model_file_service, sha256_of
from services.models.model_files import INDEX_FILE, weight_files_for_stage
from services.models.model_store import ModelStore
from services.platform.grpc_server import GrpcServer
from tests.tiny_architectures import build_tiny_model

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

MODEL = ModelId("tiny-llama")


@pytest.fixture
def source_store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "source")
    model_dir = build_tiny_model("llama", store.model_dir(MODEL))
    (model_dir / "tokenizer.json").write_text('{"stand-in": true}')
    return store


def _names(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


def test_fetch_metadata_then_one_stage_then_resume(source_store: ModelStore, tmp_path: Path) -> None:
    target = ModelStore(tmp_path / "target")

    async def scenario() -> None:
        server = GrpcServer("127.0.0.1", 0, [MODEL_FILES_SERVICE_NAME])
        add_model_file_service(server.server, source_store)
        await server.start()
        sources = ["127.0.0.1:1", f"127.0.0.1:{server.port}"]  # the first is down: the next is tried
        fetcher = ModelFetcher(target)
        try:
            await fetcher.ensure_metadata(MODEL, sources)
            model_dir = target.model_dir(MODEL)
            assert _names(model_dir) == {CONFIG_FILE, INDEX_FILE, "tokenizer.json"}
            assert target.has_model(MODEL)
            num_layers = read_model_config(model_dir).num_layers
            assert num_layers >= 2
            await fetcher.ensure_stage(MODEL, 1, num_layers, sources)
            needed = {path.name for path in weight_files_for_stage(model_dir, 1, num_layers)}
            assert _names(model_dir) == {CONFIG_FILE, INDEX_FILE, "tokenizer.json", *needed}
            for name in needed:
                assert sha256_of(model_dir / name) == sha256_of(source_store.model_dir(MODEL) / name)
            # An interrupted transfer: half of the embedding file arrived; the rest is resumed.
            embed = weight_files_for_stage(source_store.model_dir(MODEL), 0, 1)[0]
            (model_dir / embed.name).unlink(missing_ok=True)
            partial_path(model_dir, embed.name).write_bytes(embed.read_bytes()[: embed.stat().st_size // 2])
            # A corrupt partial file of a layer: detected by the checksum and fetched again.
            layer = weight_files_for_stage(source_store.model_dir(MODEL), 0, 1)[1]
            partial_path(model_dir, layer.name).write_bytes(b"\0" * 10)
            await fetcher.ensure_stage(MODEL, 0, 1, sources)
            for path in weight_files_for_stage(source_store.model_dir(MODEL), 0, 1):
                assert sha256_of(model_dir / path.name) == sha256_of(path)
            assert not any(name.endswith(".partial") for name in _names(model_dir))
            with pytest.raises(FetchError, match="not here and no peer"):
                await ModelFetcher(ModelStore(tmp_path / "other")).ensure_stage(MODEL, 0, 1, [])
            with pytest.raises(FetchError, match="not in this store"):
                await ModelFetcher(ModelStore(tmp_path / "other")).ensure_metadata(
                    ModelId("absent"), [f"127.0.0.1:{server.port}"]
                )
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_gateway_fetches_only_the_tokenizer_files(source_store: ModelStore, tmp_path: Path) -> None:
    target = ModelStore(tmp_path / "gateway-home" / "models")

    async def scenario() -> None:
        server = GrpcServer("127.0.0.1", 0, [MODEL_FILES_SERVICE_NAME])
        add_model_file_service(server.server, source_store)
        await server.start()
        presence = GatewayPresence(
            DiscoveryOptions(cluster="c", mdns=False), NodeId("gateway-node"), "127.0.0.1:1", target
        )
        await presence.start()
        fetching = asyncio.create_task(presence.keep_tokenizers(lambda: [MODEL], lambda: f"127.0.0.1:{server.port}"))
        try:
            for _ in range(100):  # bounded: 10 s
                if target.has_model(MODEL):
                    break
                await asyncio.sleep(0.1)
            assert _names(target.model_dir(MODEL)) == {CONFIG_FILE, INDEX_FILE, "tokenizer.json"}
        finally:
            fetching.cancel()
            await presence.stop()
            await server.stop()

    asyncio.run(scenario())
