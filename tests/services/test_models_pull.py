"""`strata models pull`: a tiny llama laid out as a Hub repository, pulled from a real HTTP fake Hub."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import mlx.core as mx
import pytest
from mlx_lm.models.llama import Model
from mlx_lm.utils import load_model

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.hub_pull import (
    HubUnreachableError,
    PullError,
    default_model_id,
    incomplete_path,
    parse_repo_reference,
    pull_model,
)
from services.models.model_card import model_card
from services.models.model_families import UnsupportedModelError
from services.models.model_store import ModelStore
from tests.gateway.tiny_tokenizer import build_model_directory
from tests.services.fake_hub import GATED_MARKER, FakeHub, commit_of, fake_hub
from tests.tiny_architectures import build_tiny_model

REPO = "TinyOrg/Tiny-Llama-Chat"
WEIGHTS = "model.safetensors"
PROMPT = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])


def _hub_repository(tmp_path: Path, repo_id: str = REPO, model_type: str = "llama") -> Path:
    """A repository as the Hub holds an MLX model: one model.safetensors, config, tokenizer, and extras."""
    layered = build_tiny_model("llama", tmp_path / "layered")
    repository = tmp_path / "hub" / repo_id
    repository.mkdir(parents=True)
    weights: dict[str, mx.array] = {}
    for weight_file in sorted(layered.glob("*.safetensors")):
        loaded = mx.load(str(weight_file))
        assert isinstance(loaded, dict)
        weights.update(loaded)
    # mlx's stub leaves save_safetensors' return type out, which strict checking rejects on access.
    save = cast(Callable[[str, dict[str, mx.array], dict[str, str]], None], mx.__dict__["save_safetensors"])
    save(str(repository / WEIGHTS), weights, {"format": "mlx"})
    config = json.loads((layered / "config.json").read_text())
    (repository / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    tokenizer = build_model_directory(tmp_path / "tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, repository / name)
    (repository / "README.md").write_text("# not needed by the store\n")
    (repository / "pytorch_model.bin").write_bytes(b"\0" * 64)
    return repository


def _assert_same_model(stored_dir: Path, source_dir: Path) -> None:
    stored, _ = load_model(stored_dir)
    source, _ = load_model(source_dir)
    assert isinstance(stored, Model) and isinstance(source, Model)
    assert mx.array_equal(stored(PROMPT), source(PROMPT)).item()


def _store(tmp_path: Path) -> ModelStore:
    return ModelStore(models_root(tmp_path / "home"))


def _pull(hub: FakeHub, tmp_path: Path, reference: str = REPO) -> Path:
    return pull_model(_store(tmp_path), parse_repo_reference(reference), tmp_path / "downloads", endpoint=hub.url)


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_pull_stores_the_model_under_the_repository_name(tmp_path: Path) -> None:
    _hub_repository(tmp_path)
    with fake_hub(tmp_path / "hub") as hub:
        model_dir = _pull(hub, tmp_path, f"{REPO}@{commit_of(REPO)}")
        fetched = hub.resolved_files()

    model_id = ModelId("tiny-llama-chat")
    assert model_dir == _store(tmp_path).model_dir(model_id)
    assert _store(tmp_path).list_models() == [model_id]
    assert sorted(fetched) == ["config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json"]
    card = model_card(model_id, model_dir)
    assert card.architecture == "llama" and card.num_layers == 6 and card.runnable
    assert card.has_chat_template
    _assert_same_model(model_dir, tmp_path / "layered")
    assert not (tmp_path / "downloads" / REPO).exists()  # kept only to resume an unfinished pull

    with fake_hub(tmp_path / "hub") as hub:
        assert _pull(hub, tmp_path) == model_dir
        assert hub.requests == []  # already stored: a no-op, as `strata models import`


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_connection_dropped_mid_file_is_resumed(tmp_path: Path) -> None:
    _hub_repository(tmp_path)
    with fake_hub(tmp_path / "hub") as hub:
        hub.faults.drop_first_get.add(WEIGHTS)
        model_dir = _pull(hub, tmp_path)
        weight_gets = hub.resolved_files().count(WEIGHTS)
        ranges = list(hub.ranges)
        size = (tmp_path / "hub" / REPO / WEIGHTS).stat().st_size

    assert weight_gets == 2  # the cut one, then the rest of it
    assert len(ranges) == 1 and ranges[0][0] == WEIGHTS
    resumed_from = int(ranges[0][1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= size // 2
    _assert_same_model(model_dir, tmp_path / "layered")


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_pull_cut_off_mid_file_is_resumed_by_the_next_pull(tmp_path: Path) -> None:
    _hub_repository(tmp_path)
    listed_sha256 = hashlib.sha256((tmp_path / "hub" / REPO / WEIGHTS).read_bytes()).hexdigest()
    partial = incomplete_path(tmp_path / "downloads" / REPO, WEIGHTS, listed_sha256)
    with fake_hub(tmp_path / "hub") as hub:
        hub.faults.drop_first_get.add(WEIGHTS)
        hub.faults.silent_after_cut.add(WEIGHTS)
        with pytest.raises(HubUnreachableError, match="could not reach the Hub"):
            _pull(hub, tmp_path)
        assert _store(tmp_path).list_models() == []
        kept = partial.stat().st_size
        hub.faults.silent_after_cut.clear()
        with hub.lock:
            hub.requests.clear()
            hub.ranges.clear()
        model_dir = _pull(hub, tmp_path)
        fetched_again = hub.resolved_files()
        ranges = list(hub.ranges)

    size = (tmp_path / "hub" / REPO / WEIGHTS).stat().st_size
    assert 0 < kept <= size // 2  # what the cut connection brought stayed on disk
    assert fetched_again == [WEIGHTS]  # the finished small files were not fetched again
    assert ranges == [(WEIGHTS, f"bytes={kept}-")]  # and the weights continued where they stopped
    assert not partial.exists()
    _assert_same_model(model_dir, tmp_path / "layered")


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_resume_the_hub_answers_with_the_whole_file_is_refused(tmp_path: Path) -> None:
    _hub_repository(tmp_path)
    with fake_hub(tmp_path / "hub") as hub:
        hub.faults.drop_first_get.add(WEIGHTS)
        hub.faults.ignored_ranges.add(WEIGHTS)  # the resume gets 200 and the file from its first byte
        with pytest.raises(HubUnreachableError, match=r"answered 200 .* to a request from byte \d+"):
            _pull(hub, tmp_path)
    assert _store(tmp_path).list_models() == []


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_an_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with pytest.raises(HubUnreachableError, match=f"could not reach the Hub for {REPO}@main"):
        pull_model(_store(tmp_path), parse_repo_reference(REPO), tmp_path / "downloads", endpoint=endpoint)


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_corrupted_file_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    _hub_repository(tmp_path)
    with fake_hub(tmp_path / "hub") as hub:
        hub.faults.corrupted.add(WEIGHTS)
        with pytest.raises(PullError, match=rf"{WEIGHTS} is corrupted .*nothing was stored"):
            _pull(hub, tmp_path)

    assert _store(tmp_path).list_models() == []
    assert not (tmp_path / "downloads" / REPO / WEIGHTS).exists()


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_unknown_repository_and_revision_are_refused(tmp_path: Path) -> None:
    _hub_repository(tmp_path)
    with fake_hub(tmp_path / "hub") as hub:
        with pytest.raises(PullError, match="repository 'TinyOrg/Nothing' not found"):
            _pull(hub, tmp_path, "TinyOrg/Nothing")
        with pytest.raises(PullError, match=f"revision 'v9' not found in {REPO}"):
            _pull(hub, tmp_path, f"{REPO}@v9")
    assert _store(tmp_path).list_models() == []


@pytest.mark.unit
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("missing", "reason"),
    [("config.json", "has no config.json"), (WEIGHTS, r"has no \*\.safetensors weights")],
)
def test_a_repository_without_config_or_safetensors_is_refused(tmp_path: Path, missing: str, reason: str) -> None:
    (_hub_repository(tmp_path) / missing).unlink()
    with fake_hub(tmp_path / "hub") as hub:
        with pytest.raises(PullError, match=reason):
            _pull(hub, tmp_path)
        assert hub.resolved_files() == []
    assert _store(tmp_path).list_models() == []


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_a_gated_repository_asks_for_a_token(tmp_path: Path) -> None:
    (_hub_repository(tmp_path) / GATED_MARKER).touch()
    with fake_hub(tmp_path / "hub") as hub, pytest.raises(PullError, match=f"{REPO} is gated: .*set HF_TOKEN"):
        _pull(hub, tmp_path)


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_an_unsupported_family_is_refused_before_any_weight_is_fetched(tmp_path: Path) -> None:
    _hub_repository(tmp_path, model_type="mamba")
    with fake_hub(tmp_path / "hub") as hub:
        with pytest.raises(UnsupportedModelError, match="model type 'mamba' is not supported"):
            _pull(hub, tmp_path)
        fetched = hub.resolved_files("GET") + hub.resolved_files("HEAD")

    assert "config.json" in fetched
    assert not [name for name in fetched if name.endswith(".safetensors")]
    assert _store(tmp_path).list_models() == []


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "a/b/c", "org/name@", "../x", "org/na me"])
def test_invalid_repository_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid repository"):
        parse_repo_reference(text)


@pytest.mark.unit
def test_default_model_id_is_the_repository_name_lowercased() -> None:
    assert default_model_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m-instruct"
    assert parse_repo_reference("Org/Name@v1.0").revision == "v1.0"
    assert parse_repo_reference("Org/Name").revision == "main"


def _strata_pull(
    tmp_path: Path, hub: FakeHub, *arguments: str, extra_environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **(extra_environment or {}),
    }
    command = [sys.executable, "-m", "services.app.cli", "models", "pull", *arguments, "--home", str(tmp_path / "home")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=environment)


@pytest.mark.process
@pytest.mark.timeout(300)
def test_strata_models_pull_honours_hf_endpoint_and_exits_2_on_refusal(tmp_path: Path) -> None:
    _hub_repository(tmp_path)
    _hub_repository(tmp_path / "other", repo_id="TinyOrg/Mamba", model_type="mamba")
    shutil.move(tmp_path / "other" / "hub" / "TinyOrg" / "Mamba", tmp_path / "hub" / "TinyOrg" / "Mamba")
    with fake_hub(tmp_path / "hub") as hub:
        pulled = _strata_pull(tmp_path, hub, REPO, "--id", "my-llama")
        refused = _strata_pull(tmp_path, hub, "TinyOrg/Mamba")
        unknown = _strata_pull(tmp_path, hub, "TinyOrg/Nothing@main")
        bad_id = _strata_pull(tmp_path, hub, REPO, "--id", "Not Valid")
        offline = _strata_pull(tmp_path, hub, REPO, "--id", "offline-llama", extra_environment={"HF_HUB_OFFLINE": "1"})
        requests_while_offline = len(hub.requests)

    assert pulled.returncode == 0, pulled.stderr
    assert f"my-llama is in the store at {_store(tmp_path).model_dir(ModelId('my-llama'))}" in pulled.stdout
    assert refused.returncode == 2
    assert "strata models pull: refused:" in refused.stderr and "'mamba' is not supported" in refused.stderr
    assert unknown.returncode == 2 and "'TinyOrg/Nothing' not found" in unknown.stderr
    assert bad_id.returncode == 2 and "invalid model id 'Not Valid'" in bad_id.stderr
    assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stderr
    assert len(hub.requests) == requests_while_offline
    assert _store(tmp_path).list_models() == [ModelId("my-llama")]
