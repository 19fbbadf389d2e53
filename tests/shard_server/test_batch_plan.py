"""The first shard's batch composition: decode rows in waves, one prompt chunk at a time."""

import pytest

from services.ids import RequestId
from shard_server.batch_plan import MAX_DECODE_ROWS, DecodeRow, decode_cap, plan_batch


def rows(count: int) -> list[DecodeRow]:
    return [DecodeRow(RequestId(f"request-{index}"), index, 10 + index) for index in range(count)]


@pytest.mark.parametrize(
    ("decoding", "ring_size", "cap"),
    [(1, 1, 1), (32, 1, 32), (32, 2, 16), (33, 2, 17), (3, 3, 1), (2, 3, 1), (0, 2, 1), (1000, 1, MAX_DECODE_ROWS)],
)
def test_decode_cap_splits_running_requests_into_one_wave_per_shard(decoding: int, ring_size: int, cap: int) -> None:
    assert decode_cap(decoding, ring_size) == cap


def test_plan_takes_decode_rows_up_to_the_cap_in_arrival_order_then_one_prefill() -> None:
    ready = rows(20)
    waiting = [RequestId("new-1"), RequestId("new-2")]
    plan = plan_batch(ready, waiting, decoding_requests=20, ring_size=2)
    assert plan.decode_rows == tuple(ready[:10])
    assert plan.prefill_request == RequestId("new-1")


def test_plan_without_prompts_waiting_has_no_prefill() -> None:
    plan = plan_batch(rows(3), [], decoding_requests=3, ring_size=1)
    assert plan.prefill_request is None
    assert len(plan.decode_rows) == 3


def test_plan_with_only_a_prompt_waiting() -> None:
    plan = plan_batch([], [RequestId("only")], decoding_requests=0, ring_size=3)
    assert plan.decode_rows == ()
    assert plan.prefill_request == RequestId("only")
