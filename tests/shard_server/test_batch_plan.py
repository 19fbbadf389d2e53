"""The first shard's batch composition: decode rows in waves, then prompt chunks within a row budget."""

import pytest

from services.kernel.ids import RequestId
from shard_server.batch_plan import (
    MAX_DECODE_ROWS,
    RING_WAVES_VARIABLE,
    DecodeRow,
    WaitingPrompt,
    decode_cap,
    plan_batch,
    ring_waves_from_environment,
)

pytestmark = pytest.mark.unit


def rows(count: int) -> list[DecodeRow]:
    return [DecodeRow(RequestId(f"request-{index}"), index, 10 + index) for index in range(count)]


def waiting(*chunk_rows: int) -> list[WaitingPrompt]:
    return [WaitingPrompt(RequestId(f"new-{index}"), length) for index, length in enumerate(chunk_rows)]


@pytest.mark.parametrize(
    ("decoding", "waves", "cap"),
    [(1, 1, 1), (32, 1, 32), (32, 2, 16), (33, 2, 17), (3, 3, 1), (2, 3, 1), (0, 2, 1), (1000, 1, MAX_DECODE_ROWS)],
)
def test_decode_cap_splits_running_requests_into_the_rings_waves(decoding: int, waves: int, cap: int) -> None:
    assert decode_cap(decoding, waves) == cap


@pytest.mark.parametrize(
    ("value", "waves"), [(None, None), ("", None), ("1", 1), (" 2 ", 2), ("0", None), ("-1", None), ("many", None)]
)
def test_ring_waves_come_from_the_environment_as_a_positive_count_or_the_default(
    value: str | None, waves: int | None
) -> None:
    environment = {} if value is None else {RING_WAVES_VARIABLE: value}
    assert ring_waves_from_environment(environment) == waves


def test_plan_takes_decode_rows_up_to_the_cap_in_arrival_order_then_prompts() -> None:
    ready = rows(20)
    plan = plan_batch(ready, waiting(5, 7), decoding_requests=20, waves=2, prompt_row_budget=256)
    assert plan.decode_rows == tuple(ready[:10])
    assert plan.prefill_requests == (RequestId("new-0"), RequestId("new-1"))


def test_plan_without_prompts_waiting_has_no_prefill() -> None:
    plan = plan_batch(rows(3), [], decoding_requests=3, waves=1, prompt_row_budget=256)
    assert plan.prefill_requests == ()
    assert len(plan.decode_rows) == 3


def test_plan_with_only_a_prompt_waiting() -> None:
    plan = plan_batch([], waiting(256), decoding_requests=0, waves=3, prompt_row_budget=256)
    assert plan.decode_rows == ()
    assert plan.prefill_requests == (RequestId("new-0"),)


def test_a_burst_of_short_prompts_is_prefilled_together_up_to_the_budget() -> None:
    plan = plan_batch([], waiting(*[19] * 32), decoding_requests=0, waves=1, prompt_row_budget=256)
    assert len(plan.prefill_requests) == 256 // 19
    assert plan.prefill_requests == tuple(RequestId(f"new-{index}") for index in range(256 // 19))


def test_the_oldest_prompt_goes_first_whatever_its_size_and_smaller_ones_fill_the_rest() -> None:
    plan = plan_batch([], waiting(200, 100, 40, 16, 1), decoding_requests=0, waves=1, prompt_row_budget=256)
    # 200 first; 100 does not fit in the 56 rows left, 40 and 16 do, and then the budget is full.
    assert plan.prefill_requests == (RequestId("new-0"), RequestId("new-2"), RequestId("new-3"))


def test_a_full_chunk_fills_a_batch_alone() -> None:
    plan = plan_batch([], waiting(256, 1, 1), decoding_requests=0, waves=1, prompt_row_budget=256)
    assert plan.prefill_requests == (RequestId("new-0"),)
