"""The stage worker's counters: a fresh snapshot taken between batches, or the last one when it stays busy."""

import threading
from pathlib import Path

import pytest

from services.kernel.ids import InstanceId
from shard_server.model_stage import StageRange
from shard_server.ring_messages import Effect, LoadStage, StageLoadFailed
from shard_server.stage_worker import StageWorker

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def _failing_load(tmp_path: Path, instance: str) -> LoadStage:
    return LoadStage(InstanceId(instance), tmp_path / "no-such-model", StageRange(0, 1, 1), 16, "float32", 1)


def test_a_busy_worker_answers_with_its_last_snapshot_then_a_fresh_one(tmp_path: Path) -> None:
    release = threading.Event()
    failed: list[str] = []

    def emit(effect: Effect) -> None:  # runs on the worker thread: holding it here keeps the worker busy
        if isinstance(effect, StageLoadFailed):
            failed.append(effect.instance_id)
            release.wait(timeout=20)

    worker = StageWorker(emit)
    worker.start()
    try:
        worker.submit(_failing_load(tmp_path, "first"))
        worker.submit(_failing_load(tmp_path, "second"))  # still queued while the first one's emit waits

        busy = worker.fresh_stats(timeout_seconds=0.2)

        assert busy == worker.stats()
        assert busy.instance_id is None
        assert failed == ["first"]
        release.set()
        fresh = worker.fresh_stats(timeout_seconds=10)
        assert failed == ["first", "second"]  # the snapshot came after the items queued before it
        assert fresh.instance_id is None
        assert fresh.steps == 0
    finally:
        release.set()
        worker.stop()


def test_an_idle_worker_answers_at_once(tmp_path: Path) -> None:
    worker = StageWorker(lambda effect: None)
    worker.start()
    try:
        stats = worker.fresh_stats(timeout_seconds=10)

        assert stats.active_requests == 0
        assert stats.kv_cache_bytes == 0
    finally:
        worker.stop()
