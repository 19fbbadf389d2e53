"""Per-instance activity over an injected clock: in flight, the 5 s rate in 1 s buckets, the total."""

import pytest

from gateway.instance_activity import InstanceActivity, InstanceActivitySnapshot
from services.kernel.ids import InstanceId

pytestmark = pytest.mark.unit

ONE = InstanceId("one")
TWO = InstanceId("two")


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_in_flight_follow_starts_and_ends() -> None:
    activity = InstanceActivity(ManualClock())
    activity.request_started(ONE)
    activity.request_started(ONE)
    activity.request_started(TWO)
    activity.request_ended(ONE)
    snapshot = activity.snapshot()
    assert snapshot[ONE].requests_in_flight == 1 and snapshot[TWO].requests_in_flight == 1
    activity.request_ended(TWO)
    activity.request_ended(TWO)  # an extra end never goes below zero
    assert activity.snapshot()[TWO].requests_in_flight == 0


def test_the_rate_covers_five_one_second_buckets_and_the_total_everything() -> None:
    clock = ManualClock()
    activity = InstanceActivity(clock)
    for second in range(5):
        clock.now = 1000.0 + second + 0.5
        activity.tokens_streamed(ONE, 10)
    assert activity.snapshot()[ONE] == InstanceActivitySnapshot(
        requests_in_flight=0, tokens_per_second=10.0, total_tokens=50
    )
    clock.now = 1005.2  # the first bucket (second 1000) has left the window
    assert activity.snapshot()[ONE].tokens_per_second == 8.0
    clock.now = 1010.0
    assert activity.snapshot()[ONE] == InstanceActivitySnapshot(
        requests_in_flight=0, tokens_per_second=0.0, total_tokens=50
    )


def test_instances_are_counted_apart_and_documented_by_id() -> None:
    activity = InstanceActivity(ManualClock())
    activity.tokens_streamed(ONE, 3)
    activity.tokens_streamed(TWO)
    assert activity.snapshot_document() == {
        "one": {"requests_in_flight": 0, "tokens_per_second": 0.6, "total_tokens": 3},
        "two": {"requests_in_flight": 0, "tokens_per_second": 0.2, "total_tokens": 1},
    }
