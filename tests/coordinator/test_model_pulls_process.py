"""`ModelPulls` with its real child (`strata models pull`) against the fake Hub: a pull refused before it
starts leaves no child, a pull in progress is reported with its progress, and stopping the coordinator
stops the child by its pid and reports the pull as failed."""

import asyncio
import os
from pathlib import Path

import pytest

from coordinator.model_pulls import ModelPulls
from services.kernel.ids import NodeId
from services.kernel.settings import models_root
from services.kernel.status_errors import AlreadyExistsError, NotFoundError
from services.models.model_store import ModelStore
from tests.services.fake_hub import fake_hub
from tests.services.test_models_pull import REPO, _hub_repository  # pyright: ignore[reportPrivateUsage]

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose here; /proc says so.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_stopping_the_coordinator_stops_its_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_repository(tmp_path)
    home = tmp_path / "home"
    with fake_hub(tmp_path / "hub") as hub:
        hub.faults.slow_seconds = 60.0  # the weights take a minute: the pull is stopped half way
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

        async def scenario() -> None:
            pulls = ModelPulls(home, NodeId("node-a"), ModelStore(models_root(home)), endpoint=hub.url)
            with pytest.raises(NotFoundError):
                await pulls.start("TinyOrg/Absent", "", replace=False)
            assert pulls.pulls() == []
            started = await pulls.start(REPO, "", replace=False)
            assert started.state == "downloading" and started.bytes_total > 0
            assert (await pulls.start(REPO, "", replace=False)).pull_id == started.pull_id
            with pytest.raises(AlreadyExistsError, match="in progress"):
                await pulls.start(REPO, "another-id", replace=False)
            children = [run.process for run in pulls._running.values()]  # pyright: ignore[reportPrivateUsage]
            [child] = children
            assert child is not None
            for _ in range(600):  # until the child is fetching the weights
                if "model.safetensors" in hub.resolved_files():
                    break
                await asyncio.sleep(0.2)
            await pulls.stop()
            assert not _alive(child.pid)
            [ended] = pulls.pulls()
            assert ended.state == "failed" and ended.pull_id == started.pull_id and ended.error

        asyncio.run(scenario())
        hub.faults.slow_seconds = 0.0
