"""The parts of a pull that need no Hub: progress read from a download folder, the status of each
refusal, the hosts' memory table, and how `strata status` shows downloads and host memory."""

from pathlib import Path

import pytest

from coordinator.host_memory import HostMemoryTable
from coordinator.model_pulls import ModelPull, PulledFile, PullState, file_progress, refusal_status
from coordinator.pull_wire import pull_request_from_pb, pull_to_pb
from services.app.status_view import render_status
from services.kernel.ids import ModelId, NodeId
from services.kernel.status_errors import InvalidArgumentError
from services.models.hub_files import (
    GatedRepositoryError,
    HubFile,
    HubOfflineError,
    HubUnreachableError,
    NotAModelRepositoryError,
    PullError,
    UnknownRepositoryError,
    UnknownRevisionError,
)
from services.models.model_families import UnsupportedModelError
from strata_wire import coordinator_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SHA = "ab" * 32


def test_progress_counts_finished_files_and_the_part_of_the_one_under_way(tmp_path: Path) -> None:
    download_dir = tmp_path
    (download_dir / "config.json").write_text("{}")
    partial = download_dir / ".cache" / "huggingface" / "download"
    partial.mkdir(parents=True)
    (partial / f"Xy12.{SHA}.incomplete").write_bytes(b"\0" * 1000)
    assert file_progress(download_dir, HubFile(name="config.json", sha256=None, size=2)) == 2
    assert file_progress(download_dir, HubFile(name="model.safetensors", sha256=SHA, size=4000)) == 1000
    assert file_progress(download_dir, HubFile(name="other.safetensors", sha256="cd" * 32, size=9)) == 0
    assert file_progress(download_dir, HubFile(name="tokenizer.json", sha256=None, size=9)) == 0
    (download_dir / "model.safetensors").write_bytes(b"\0" * 4000)
    assert file_progress(download_dir, HubFile(name="model.safetensors", sha256=SHA, size=4000)) == 4000


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownRepositoryError("x"), "NOT_FOUND"),
        (UnknownRevisionError("x"), "NOT_FOUND"),
        (GatedRepositoryError("x"), "PERMISSION_DENIED"),
        (HubUnreachableError("x"), "UNAVAILABLE"),
        (HubOfflineError("x"), "FAILED_PRECONDITION"),
        (NotAModelRepositoryError("x"), "FAILED_PRECONDITION"),
        (UnsupportedModelError("x"), "FAILED_PRECONDITION"),
        (PullError("x"), "FAILED_PRECONDITION"),
    ],
)
def test_each_refusal_has_its_status(error: PullError | UnsupportedModelError, status: str) -> None:
    refusal = refusal_status(error)
    assert refusal.status_name == status and refusal.message == "x"


def test_a_pull_request_needs_a_repository_of_a_sane_length() -> None:
    with pytest.raises(InvalidArgumentError, match="repository is required"):
        pull_request_from_pb(coordinator_pb2.PullModelRequest())
    with pytest.raises(InvalidArgumentError, match="at most"):
        pull_request_from_pb(coordinator_pb2.PullModelRequest(repository="a/" + "b" * 400))
    request = coordinator_pb2.PullModelRequest(repository="Org/Name@v1", model_id="mine", replace=True)
    assert pull_request_from_pb(request) == ("Org/Name@v1", "mine", True)


def test_host_memory_keeps_the_latest_report_per_node() -> None:
    table = HostMemoryTable()
    table.record(coordinator_pb2.RegisterShardRequest(node_id="node-a"))  # an older shard: no memory sent
    assert table.to_pb() == []
    for free in (5, 3):
        table.record(
            coordinator_pb2.RegisterShardRequest(
                node_id="node-a", host_memory_total_bytes=8, host_memory_free_bytes=free
            )
        )
    table.record(
        coordinator_pb2.RegisterShardRequest(node_id="node-b", host_memory_total_bytes=4, host_memory_free_bytes=9)
    )
    assert [(report.node_id, report.total_bytes, report.free_bytes) for report in table.to_pb()] == [
        ("node-a", 8, 3),
        ("node-b", 4, 4),  # never more free than there is
    ]


def _pull(state: PullState, *, error: str = "", eta: float | None = 12.0) -> ModelPull:
    return ModelPull(
        pull_id="p1",
        repository="Org/Name",
        revision="main",
        model_id=ModelId("name"),
        node_id=NodeId("node-a"),
        state=state,
        files=(
            PulledFile(name="config.json", sha256=None, bytes_done=10, bytes_total=10),
            PulledFile(name="model.safetensors", sha256=SHA, bytes_done=2**29, bytes_total=2**30),
        ),
        bytes_per_second=3 * 2**20,
        eta_seconds=eta,
        error=error,
        started_at=1.0,
    )


def test_a_pull_on_the_wire() -> None:
    message = pull_to_pb(_pull("downloading"))
    assert (message.bytes_done, message.bytes_total) == (10 + 2**29, 10 + 2**30)
    assert message.eta_seconds == 12.0 and message.files[0].sha256 == "" and message.files[1].sha256 == SHA
    assert pull_to_pb(_pull("downloading", eta=None)).eta_seconds == -1.0


def test_status_shows_downloads_and_host_memory() -> None:
    state = coordinator_pb2.ClusterState(
        leader="10.0.0.1:52416",
        shards=[
            coordinator_pb2.ShardServerInfo(
                shard_id="node-a:52417", node_id="node-a", address="10.0.0.1:52417", available_memory_bytes=2**31
            )
        ],
        host_memory=[coordinator_pb2.HostMemory(node_id="node-a", total_bytes=2**34, free_bytes=2**32)],
        pulls=[pull_to_pb(_pull("downloading")), pull_to_pb(_pull("failed", error="Org/Name is gated", eta=None))],
    )
    text = render_status(state)
    assert "USED/FREE GiB" in text and "12.00/4.00" in text
    assert "downloads" in text
    [downloading] = [line for line in text.splitlines() if "downloading" in line]
    assert "Org/Name@main" in downloading and "0.50/1.00" in downloading and "3.0" in downloading
    assert "12 s" in downloading
    assert "failed: Org/Name is gated" in text
    assert "downloads" not in render_status(coordinator_pb2.ClusterState())
