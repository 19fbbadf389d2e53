"""`pull --lazy` and the shards' Hub range reads, in process: a real fake Hub over HTTP, a real ModelFiles
gRPC server on 127.0.0.1 for the pulling host's store, one store per "host"."""

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

import huggingface_hub.constants
import mlx.core as mx
import pytest

from services.kernel.ids import ModelId
from services.models.hub_pull import parse_repo_reference, pull_model
from services.models.hub_range_fetch import byte_runs
from services.models.lazy_pull import TensorPlace
from services.models.model_config import ModelConfig
from services.models.model_fetch import FetchError, ModelFetcher
from services.models.model_file_service import MODEL_FILES_SERVICE_NAME, add_model_file_service
from services.models.model_files import INDEX_FILE, read_manifest, read_weight_map, weight_files_for_stage
from services.models.model_store import ModelStore
from services.models.pull_errors import PullError
from services.models.remote_tensors import REMOTE_TENSORS_FILE, RemoteTensor, read_remote_tensors
from services.platform.grpc_server import GrpcServer
from tests.services.fake_hub import FakeHub, commit_of, fake_hub
from tests.services.hub_repositories import HUB_FILES, SHARDED_REPO, sharded_hub_repository, tensor_ranges

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

MODEL = ModelId("tiny-llama-sharded")
NUM_LAYERS = 6


def _pull_lazily(hub: FakeHub, store: ModelStore, tmp_path: Path) -> Path:
    return pull_model(store, parse_repo_reference(SHARDED_REPO), tmp_path / "downloads", endpoint=hub.url, lazy=True)


def _ranged_bytes(hub: FakeHub, start_after: int = 0) -> int:
    """Bytes the fake Hub was asked for by closed ranges (`bytes=a-b`) past the first `start_after`."""
    with hub.lock:
        ranges = hub.ranges[start_after:]
    total = 0
    for _, header in ranges:
        start, _, end = header.removeprefix("bytes=").partition("-")
        assert end, f"an open range ({header}) would read to the end of the file"
        total += int(end) - int(start) + 1
    return total


def _stage_tensor_bytes(hub_root: Path, model_dir: Path, start: int, end: int) -> int:
    """What the safetensors headers of the Hub files say the stage's tensors weigh."""
    names = {path.name for path in weight_files_for_stage(model_dir, start, end)}
    weight_map = read_weight_map(model_dir)
    ranges = {key: span for name in HUB_FILES for key, span in tensor_ranges(hub_root / name).items()}
    return sum(high - low for key, (low, high) in ranges.items() if weight_map[key] in names)


async def _serving(store: ModelStore) -> GrpcServer:
    server = GrpcServer("127.0.0.1", 0, [MODEL_FILES_SERVICE_NAME])
    add_model_file_service(server.server, store)
    await server.start()
    return server


def test_a_lazy_pull_stores_headers_and_hashes_but_no_weights(tmp_path: Path) -> None:
    layered = sharded_hub_repository(tmp_path)
    store = ModelStore(tmp_path / "puller" / "models")
    with fake_hub(tmp_path / "hub") as hub:
        model_dir = _pull_lazily(hub, store, tmp_path)
        weight_gets = [path for verb, path in hub.requests if verb == "GET" and path.endswith(HUB_FILES)]
        ranges = list(hub.ranges)

    assert store.list_models() == [MODEL]
    assert not list(model_dir.glob("*.safetensors"))
    assert {path.name for path in model_dir.iterdir()} == {
        "config.json", INDEX_FILE, REMOTE_TENSORS_FILE, "tokenizer.json", "tokenizer_config.json"
    }  # fmt: skip
    # Each Hub file, at the pulled commit: its length, its header, then streamed once whole to hash it.
    assert sorted(weight_gets) == sorted(f"/{SHARDED_REPO}/resolve/{commit_of(SHARDED_REPO)}/{name}"
                                         for name in HUB_FILES for _ in range(3))  # fmt: skip
    for name in HUB_FILES:
        header = (tmp_path / "hub" / SHARDED_REPO / name).read_bytes()
        length = int.from_bytes(header[:8], "little")
        assert [spec for file, spec in ranges if file == name] == ["bytes=0-7", f"bytes=8-{8 + length - 1}"]
    # Placement sees the same sizes as for the model imported whole.
    lazy_sizes, whole_sizes = read_manifest(model_dir), read_manifest(layered)
    assert (lazy_sizes.embedding, lazy_sizes.layers, lazy_sizes.head, lazy_sizes.tie_word_embeddings) == (
        whole_sizes.embedding, whole_sizes.layers, whole_sizes.head, whole_sizes.tie_word_embeddings
    )  # fmt: skip
    manifest = read_remote_tensors(model_dir)
    assert manifest is not None and set(manifest.tensors) == set(read_weight_map(layered))
    index = json.loads((model_dir / INDEX_FILE).read_text())
    assert index["weight_map"] == read_weight_map(layered)


def test_each_host_reads_only_its_stage_from_the_hub_or_a_peer(tmp_path: Path) -> None:
    layered = sharded_hub_repository(tmp_path)
    puller = ModelStore(tmp_path / "puller" / "models")
    first, second, third = (ModelStore(tmp_path / name / "models") for name in ("first", "second", "third"))

    async def scenario(hub: FakeHub) -> tuple[ModelFetcher, ModelFetcher, ModelFetcher]:
        pulled_server = await _serving(puller)
        first_server = await _serving(first)
        fetchers = ModelFetcher(first), ModelFetcher(second), ModelFetcher(third)
        try:
            coordinator = [f"127.0.0.1:{pulled_server.port}"]
            before = len(hub.ranges)
            await fetchers[0].ensure_stage(MODEL, 0, 3, coordinator)
            assert _ranged_bytes(hub, before) == fetchers[0].fetched.from_hub
            before = len(hub.ranges)
            await fetchers[1].ensure_stage(MODEL, 3, NUM_LAYERS, coordinator)
            assert _ranged_bytes(hub, before) == fetchers[1].fetched.from_hub
            # A host whose peer holds the files gets them from the peer: nothing from the Hub.
            before = len(hub.ranges)
            await fetchers[2].ensure_stage(MODEL, 0, 3, [*coordinator, f"127.0.0.1:{first_server.port}"])
            assert len(hub.ranges) == before
        finally:
            await pulled_server.stop()
            await first_server.stop()
        return fetchers

    with fake_hub(tmp_path / "hub") as hub:
        _pull_lazily(hub, puller, tmp_path)
        fetchers = asyncio.run(scenario(hub))

    model_dir = puller.model_dir(MODEL)
    hub_root = tmp_path / "hub" / SHARDED_REPO
    assert fetchers[0].fetched.from_hub == _stage_tensor_bytes(hub_root, model_dir, 0, 3)
    assert fetchers[1].fetched.from_hub == _stage_tensor_bytes(hub_root, model_dir, 3, NUM_LAYERS)
    assert fetchers[2].fetched.from_hub == 0
    stage_files = {path.name for path in weight_files_for_stage(model_dir, 0, 3)}
    assert fetchers[2].fetched.from_peers >= sum((first.model_dir(MODEL) / name).stat().st_size for name in stage_files)
    for store, (start, end) in ((first, (0, 3)), (second, (3, NUM_LAYERS)), (third, (0, 3))):
        present = {path.name for path in store.model_dir(MODEL).glob("*.safetensors")}
        assert present == {path.name for path in weight_files_for_stage(model_dir, start, end)}
        for name in present:  # the same tensors as the original, key for key, bit for bit
            rebuilt, original = mx.load(str(store.model_dir(MODEL) / name)), mx.load(str(layered / name))
            assert isinstance(rebuilt, dict) and isinstance(original, dict)
            assert rebuilt.keys() == original.keys()
            for key, array in original.items():
                assert rebuilt[key].dtype == array.dtype and mx.array_equal(rebuilt[key], array).item()


def test_a_tensor_that_fails_its_hash_is_refused_and_not_written(tmp_path: Path) -> None:
    sharded_hub_repository(tmp_path)
    puller = ModelStore(tmp_path / "puller" / "models")
    target = ModelStore(tmp_path / "target" / "models")
    with fake_hub(tmp_path / "hub") as hub:
        _pull_lazily(hub, puller, tmp_path)
        layer_key = "model.layers.1.mlp.up_proj.weight"
        manifest = read_remote_tensors(puller.model_dir(MODEL))
        assert manifest is not None
        tensor = manifest.tensors[layer_key]
        hub.faults.flipped_bytes[tensor.hub_file] = (tensor.start + tensor.end) // 2

        async def scenario() -> None:
            server = await _serving(puller)
            try:
                with pytest.raises(FetchError, match=rf"tensor '{layer_key}' .* has sha256 .*refused, not used"):
                    await ModelFetcher(target).ensure_stage(MODEL, 0, 3, [f"127.0.0.1:{server.port}"])
            finally:
                await server.stop()

        asyncio.run(scenario())

    model_dir = target.model_dir(MODEL)
    assert not (model_dir / "model-layer-00001.safetensors").exists()
    assert not [path for path in model_dir.iterdir() if path.name.endswith(".partial")]


def test_a_lazy_pull_of_a_corrupted_file_stores_nothing(tmp_path: Path) -> None:
    sharded_hub_repository(tmp_path)
    store = ModelStore(tmp_path / "puller" / "models")
    with fake_hub(tmp_path / "hub") as hub:
        hub.faults.flipped_bytes[HUB_FILES[1]] = (tmp_path / "hub" / SHARDED_REPO / HUB_FILES[1]).stat().st_size - 1
        with pytest.raises(PullError, match=rf"{HUB_FILES[1]} is corrupted .*nothing was stored"):
            _pull_lazily(hub, store, tmp_path)
    assert store.list_models() == []


def _fetch_stage_once(tmp_path: Path, hub: FakeHub, puller: ModelStore, target: ModelStore) -> ModelFetcher:
    async def scenario() -> ModelFetcher:
        server = await _serving(puller)
        fetcher = ModelFetcher(target)
        try:
            await fetcher.ensure_stage(MODEL, 0, 3, [f"127.0.0.1:{server.port}"])
        finally:
            await server.stop()
        return fetcher

    return asyncio.run(scenario())


def test_a_range_cut_off_mid_way_is_resumed_from_the_next_byte(tmp_path: Path) -> None:
    layered = sharded_hub_repository(tmp_path)
    puller = ModelStore(tmp_path / "puller" / "models")
    target = ModelStore(tmp_path / "target" / "models")
    with fake_hub(tmp_path / "hub") as hub:
        _pull_lazily(hub, puller, tmp_path)
        hub.ranges.clear()
        hub.faults.drop_first_get.add(HUB_FILES[0])
        fetcher = _fetch_stage_once(tmp_path, hub, puller, target)
        ranges = [spec for name, spec in hub.ranges if name == HUB_FILES[0]]

    first_start, _, first_end = ranges[0].removeprefix("bytes=").partition("-")
    resumed_start, _, resumed_end = ranges[1].removeprefix("bytes=").partition("-")
    assert int(first_start) < int(resumed_start) <= int(first_end) and resumed_end == first_end
    assert fetcher.fetched.from_hub == _stage_tensor_bytes(
        tmp_path / "hub" / SHARDED_REPO, puller.model_dir(MODEL), 0, 3
    )
    for path in weight_files_for_stage(puller.model_dir(MODEL), 0, 3):
        rebuilt, original = mx.load(str(target.model_dir(MODEL) / path.name)), mx.load(str(layered / path.name))
        assert isinstance(rebuilt, dict) and isinstance(original, dict)
        assert all(mx.array_equal(rebuilt[key], array).item() for key, array in original.items())


def test_a_hub_that_ignores_ranges_is_refused_rather_than_read_whole(tmp_path: Path) -> None:
    sharded_hub_repository(tmp_path)
    puller = ModelStore(tmp_path / "puller" / "models")
    target = ModelStore(tmp_path / "target" / "models")
    with fake_hub(tmp_path / "hub") as hub:
        _pull_lazily(hub, puller, tmp_path)
        hub.faults.ignored_ranges.add(HUB_FILES[0])
        with pytest.raises(FetchError, match=r"could not read .* from the Hub .*did not answer the range .*status 200"):
            _fetch_stage_once(tmp_path, hub, puller, target)
    model_dir = target.model_dir(MODEL)
    assert not (model_dir / "model-layer-00000.safetensors").exists()  # it has tensors in that file
    assert not [path for path in model_dir.iterdir() if path.name.endswith(".partial")]


def test_a_shard_under_hf_hub_offline_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sharded_hub_repository(tmp_path)
    puller = ModelStore(tmp_path / "puller" / "models")
    with fake_hub(tmp_path / "hub") as hub:
        _pull_lazily(hub, puller, tmp_path)
        hub.requests.clear()
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(FetchError, match="HF_HUB_OFFLINE is set"):
            _fetch_stage_once(tmp_path, hub, puller, ModelStore(tmp_path / "target" / "models"))
        assert hub.requests == []


def test_a_size_check_sees_every_tensor_before_any_weight_is_read(tmp_path: Path) -> None:
    layered = sharded_hub_repository(tmp_path)
    store = ModelStore(tmp_path / "puller" / "models")
    seen: list[int] = []

    def refuse(config: ModelConfig, places: Mapping[str, Mapping[str, TensorPlace]]) -> None:
        seen.append(sum(len(file_places) for file_places in places.values()))
        raise PullError(f"{config.num_layers} layers: too large")

    with fake_hub(tmp_path / "hub") as hub:
        with pytest.raises(PullError, match="6 layers: too large"):
            pull_model(store, parse_repo_reference(SHARDED_REPO), tmp_path / "downloads", endpoint=hub.url,
                       size_check=refuse)  # fmt: skip
        weight_gets = [path for verb, path in hub.requests if verb == "GET" and path.endswith(HUB_FILES)]
        ranges = [spec for name, spec in hub.ranges if name in HUB_FILES]

    assert seen == [len(read_weight_map(layered))]
    assert len(weight_gets) == len(ranges) == 2 * len(HUB_FILES)  # each file's length and header, ranged
    assert store.list_models() == []


def _tensor(hub_file: str, start: int, end: int) -> RemoteTensor:
    return RemoteTensor(hub_file=hub_file, dtype="F32", shape=((end - start) // 4,), start=start, end=end, sha256="")


def test_adjacent_tensors_of_one_file_are_read_in_one_range() -> None:
    tensors = {
        "b": _tensor("one", 120, 200),
        "a": _tensor("one", 100, 120),
        "gap": _tensor("one", 204, 208),
        "other": _tensor("two", 200, 204),
    }
    runs = [(run.hub_file, run.start, run.end, run.keys) for run in byte_runs(tensors)]
    assert runs == [("one", 100, 200, ("a", "b")), ("one", 204, 208, ("gap",)), ("two", 200, 204, ("other",))]
