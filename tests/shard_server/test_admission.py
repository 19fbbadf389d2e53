"""The admission gate's rules (pure asyncio logic): budget, active cap, bounded FIFO queue, waits."""

import asyncio

import pytest

from services.kernel.ids import RequestId
from shard_server.admission import (
    AdmissionGate,
    AdmissionLimits,
    AdmissionRefusedError,
    kv_budget_tokens,
    with_sequence_cap,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def _id(name: str) -> RequestId:
    return RequestId(name)


def test_requests_within_the_budget_are_admitted_at_once() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(kv_budget_tokens=100))
        await gate.admit(_id("a"), 40)
        await gate.admit(_id("b"), 60)
        stats = gate.stats()
        assert (stats.active_requests, stats.reserved_tokens, stats.waiting_requests) == (2, 100, 0)

    asyncio.run(scenario())


def test_a_request_waits_for_room_and_is_admitted_when_one_finishes() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(kv_budget_tokens=100, max_wait_seconds=5))
        first = await gate.admit(_id("a"), 80)
        waiting = asyncio.create_task(gate.admit(_id("b"), 50))
        await asyncio.sleep(0.01)
        assert gate.stats().waiting_requests == 1
        gate.release(first)
        second = await waiting
        assert second.request_id == "b"
        assert gate.stats().reserved_tokens == 50

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once_with_a_retry_hint() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(max_active_requests=1, max_waiting=1, retry_after_seconds=3))
        await gate.admit(_id("a"), 1)
        queued = asyncio.create_task(gate.admit(_id("b"), 1))
        await asyncio.sleep(0.01)
        with pytest.raises(AdmissionRefusedError) as refused:
            await gate.admit(_id("c"), 1)
        assert refused.value.retry_after_seconds == 3
        assert "already wait" in refused.value.message
        assert gate.stats().rejected_requests == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert gate.stats().waiting_requests == 0

    asyncio.run(scenario())


def test_a_wait_longer_than_the_limit_is_refused_and_leaves_the_queue() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(max_active_requests=1, max_wait_seconds=0.05))
        await gate.admit(_id("a"), 1)
        with pytest.raises(AdmissionRefusedError, match=r"within 0\.05 s"):
            await gate.admit(_id("b"), 1)
        assert gate.stats().waiting_requests == 0
        assert gate.stats().active_requests == 1

    asyncio.run(scenario())


def test_a_request_larger_than_the_whole_budget_is_refused_without_waiting() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(kv_budget_tokens=10))
        with pytest.raises(AdmissionRefusedError, match="needs 11 tokens"):
            await gate.admit(_id("a"), 11)

    asyncio.run(scenario())


def test_waiters_are_served_first_come_first_served() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(kv_budget_tokens=100, max_wait_seconds=5))
        running = await gate.admit(_id("a"), 100)
        big = asyncio.create_task(gate.admit(_id("big"), 90))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(gate.admit(_id("small"), 5))
        await asyncio.sleep(0.01)
        assert not small.done()  # would fit beside nothing, but waits behind the head of the queue
        gate.release(running)
        await big
        await small
        assert gate.stats().reserved_tokens == 95

    asyncio.run(scenario())


def test_releasing_twice_or_an_unknown_ticket_changes_nothing() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(kv_budget_tokens=10))
        ticket = await gate.admit(_id("a"), 4)
        gate.release(ticket)
        gate.release(ticket)
        assert gate.stats().reserved_tokens == 0

    asyncio.run(scenario())


def test_budget_in_tokens_from_bytes_per_layer() -> None:
    assert kv_budget_tokens(0, 24) is None
    assert kv_budget_tokens(24 * 8192, 24) == 8192


def test_the_coordinators_sequence_cap_bounds_running_requests() -> None:
    assert with_sequence_cap(AdmissionLimits(kv_budget_tokens=100), 0) == AdmissionLimits(kv_budget_tokens=100)
    assert with_sequence_cap(AdmissionLimits(), 32).max_active_requests == 32
    assert with_sequence_cap(AdmissionLimits(max_active_requests=8), 32).max_active_requests == 8
    assert with_sequence_cap(AdmissionLimits(max_active_requests=64), 32).max_active_requests == 32

    async def scenario() -> None:
        gate = AdmissionGate(with_sequence_cap(AdmissionLimits(kv_budget_tokens=1000, max_wait_seconds=5), 2))
        first = await gate.admit(_id("a"), 10)
        await gate.admit(_id("b"), 10)
        third = asyncio.create_task(gate.admit(_id("c"), 10))  # tokens fit, but a third window does not
        await asyncio.sleep(0.01)
        assert gate.stats().waiting_requests == 1
        gate.release(first)
        assert (await third).request_id == "c"

    asyncio.run(scenario())
