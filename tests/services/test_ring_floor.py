"""The ring with no model that `make bench` measures a hop's floor with: two real processes over gRPC."""

import math
import subprocess
import sys

import pytest

from services.app.benchmark.ring_floor import RingFloorError, measure_ring_hop
from services.app.ports import free_port

pytestmark = pytest.mark.process

HIDDEN_SIZE = 576


@pytest.mark.timeout(120)
def test_a_hop_with_no_model_is_timed_from_one_model_thread_to_the_other() -> None:
    one_way = measure_ring_hop(HIDDEN_SIZE, rounds=12, step_seconds=0.002, ready_seconds=30.0)

    assert math.isfinite(one_way)
    assert 0.0 < one_way < 1.0


@pytest.mark.timeout(120)
def test_a_side_whose_peer_never_answers_fails_with_a_message() -> None:
    nobody = free_port()
    side = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.app.benchmark.ring_floor",
            str(free_port()),
            str(nobody),
            "0",
            "3",
            "0.01",
            "1",
            str(HIDDEN_SIZE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert side.returncode == 1
    assert "no message from the peer in time" in side.stderr


@pytest.mark.timeout(120)
def test_a_ring_whose_sides_time_out_raises_instead_of_hanging() -> None:
    # The second side waits for a first message that takes 50 ms of compute, for at most 1 ms.
    with pytest.raises(RingFloorError, match="a side of the ring failed"):
        measure_ring_hop(HIDDEN_SIZE, rounds=3, step_seconds=0.05, ready_seconds=0.001)


@pytest.mark.timeout(120)
def test_a_ring_that_does_not_finish_in_time_is_stopped_and_raises() -> None:
    # Each side computes 1 s per round and waits up to 30 s for its peer, so neither can finish, or fail
    # on its own, within the 0.5 s allowed: the stop comes from the deadline alone.
    with pytest.raises(RingFloorError, match=r"did not finish within 0\.5 s"):
        measure_ring_hop(HIDDEN_SIZE, rounds=3, step_seconds=1.0, ready_seconds=30.0, allowed_seconds=0.5)
