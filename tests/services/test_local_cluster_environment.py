"""`strata run`'s environment for shard servers sharing this host's cores."""

import os

import pytest

from services.app.local_cluster import shard_environment
from shard_server.batch_plan import RING_WAVES_VARIABLE
from shard_server.blas_threads import SHARED_THREADS_VARIABLE

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (RING_WAVES_VARIABLE, SHARED_THREADS_VARIABLE, "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)


def test_one_ring_over_the_hosts_shards_keeps_one_wave_on_every_core() -> None:
    environment = shard_environment(shards=2, instances=1)

    assert environment[RING_WAVES_VARIABLE] == "1"
    assert environment[SHARED_THREADS_VARIABLE] == str(len(os.sched_getaffinity(0)))
    assert environment["OPENBLAS_THREAD_TIMEOUT"] == "8"


def test_an_instance_per_shard_has_no_ring_and_each_keeps_its_share_of_the_cores() -> None:
    environment = shard_environment(shards=2, instances=2)

    assert RING_WAVES_VARIABLE not in environment
    assert environment[SHARED_THREADS_VARIABLE] == str(max(1, len(os.sched_getaffinity(0)) // 2))


def test_a_lone_shard_gets_no_wave_setting_and_an_operators_choice_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RING_WAVES_VARIABLE not in shard_environment(shards=1, instances=1)
    monkeypatch.setenv(RING_WAVES_VARIABLE, "2")
    assert shard_environment(shards=3, instances=1)[RING_WAVES_VARIABLE] == "2"
