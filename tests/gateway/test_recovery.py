"""The recovering token source's logic, in memory: a run that breaks is replayed from the journal on a
ready instance and the client sees every token once; attempts and the recovery deadline are bounded;
refusals are not retried. (The real thing, with shard processes killed, is tests/system.)"""

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field

import pytest

from gateway.cluster_view import ReadyInstance
from gateway.recovery import RecoveringTokenSource, RecoveryPolicy
from gateway.token_source import (
    GeneratedToken,
    GenerationFinished,
    ModelUnavailableError,
    ModelUnservedError,
    PipelineError,
    RecoveryFailedError,
    TokenEvent,
    TokenRequest,
)
from services.kernel.ids import InstanceId, ModelId, RequestId
from services.kernel.sampling import SamplingOptions

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(20)]

MODEL = ModelId("tiny-chat")
SCRIPT = [10, 11, 12, 13, 14, 15, 16, 17]
"""What the "model" generates for the request, whatever the instance (exact compute)."""


def _request(max_tokens: int = len(SCRIPT)) -> TokenRequest:
    return TokenRequest(
        request_id=RequestId("req-1"),
        model_id=MODEL,
        prompt_tokens=(1, 2, 3),
        max_tokens=max_tokens,
        sampling=SamplingOptions(temperature=0.7, seed=5),
        stop_token_ids=(),
    )


@dataclass
class FakeCluster:
    """Instances by id (ready or not) and how each run on them behaves."""

    ready: list[InstanceId] = field(default_factory=list[InstanceId])
    fail_after: dict[InstanceId, int] = field(default_factory=dict[InstanceId, int])
    """Instance -> generated-token index at which its runs break."""
    hang_after: dict[InstanceId, int] = field(default_factory=dict[InstanceId, int])
    """Instance -> index at which its runs stop answering (until cancelled)."""
    refuse: bool = False
    calls: list[tuple[InstanceId, RequestId, tuple[int, ...]]] = field(
        default_factory=list[tuple[InstanceId, RequestId, tuple[int, ...]]]
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    served: bool = True

    def set_ready(self, ready: list[InstanceId]) -> None:
        self.ready = ready
        self.changed.set()
        self.changed = asyncio.Event()

    # InstanceWatch
    def ready_instance(
        self, model_id: ModelId, avoiding: InstanceId | None = None, load: Mapping[InstanceId, int] | None = None
    ) -> ReadyInstance | None:
        candidates = [instance_id for instance_id in self.ready if instance_id != avoiding]
        chosen = min(candidates, key=lambda instance_id: (load or {}).get(instance_id, 0), default=None)
        return None if chosen is None else ReadyInstance(chosen, f"{chosen}:1")

    async def wait_for_change(self, timeout_seconds: float) -> None:
        try:
            await asyncio.wait_for(self.changed.wait(), timeout_seconds)
        except TimeoutError:
            return

    async def wait_until_not_serving(self, instance_id: InstanceId) -> None:
        while instance_id in self.ready:
            await self.wait_for_change(0.05)

    def is_served(self, model_id: ModelId) -> bool:
        return self.served

    # InstanceRuns
    async def generate_on(
        self, instance: ReadyInstance, request: TokenRequest, call_id: RequestId, replay_tokens: tuple[int, ...]
    ) -> AsyncGenerator[TokenEvent]:
        self.calls.append((instance.instance_id, call_id, replay_tokens))
        if self.refuse:
            raise PipelineError("INVALID_ARGUMENT bad request", retryable=False)
        assert list(replay_tokens) == SCRIPT[: len(replay_tokens)], "the journal must be what was generated"
        for index in range(len(replay_tokens), request.max_tokens):
            if self.fail_after.get(instance.instance_id) == index:
                raise PipelineError(f"UNAVAILABLE shard of {instance.instance_id} died")
            if self.hang_after.get(instance.instance_id) == index:
                await asyncio.sleep(3600)
            await asyncio.sleep(0)
            yield GeneratedToken(token_id=SCRIPT[index])
        yield GenerationFinished(reason="length", prompt_tokens=3, generated_tokens=request.max_tokens)


async def _collect(source: RecoveringTokenSource, request: TokenRequest) -> list[TokenEvent]:
    return [event async for event in source.generate(request)]


def _tokens(events: list[TokenEvent]) -> list[int]:
    return [event.token_id for event in events if isinstance(event, GeneratedToken)]


async def test_a_broken_run_is_replayed_on_the_re_placed_instance_and_no_token_repeats() -> None:
    cluster = FakeCluster(ready=[InstanceId("a")], fail_after={InstanceId("a"): 3})
    source = RecoveringTokenSource(cluster, cluster, RecoveryPolicy(deadline_seconds=5))

    async def re_place() -> None:
        await asyncio.sleep(0.2)
        cluster.set_ready([InstanceId("b")])

    replacing = asyncio.create_task(re_place())
    events = await _collect(source, _request())
    await replacing
    assert _tokens(events) == SCRIPT
    assert isinstance(events[-1], GenerationFinished)
    assert cluster.calls == [("a", "req-1", ()), ("b", "req-1-r1", tuple(SCRIPT[:3]))]


async def test_an_instance_the_coordinator_removes_is_left_even_while_its_stream_is_silent() -> None:
    cluster = FakeCluster(ready=[InstanceId("a")], hang_after={InstanceId("a"): 5})
    source = RecoveringTokenSource(cluster, cluster, RecoveryPolicy(deadline_seconds=5))

    async def remove_and_re_place() -> None:
        await asyncio.sleep(0.2)
        cluster.set_ready([InstanceId("b")])

    replacing = asyncio.create_task(remove_and_re_place())
    events = await _collect(source, _request())
    await replacing
    assert _tokens(events) == SCRIPT
    assert [call[0] for call in cluster.calls] == ["a", "b"]


async def test_a_model_unserved_mid_stream_ends_the_stream_at_once_with_a_clear_error() -> None:
    cluster = FakeCluster(ready=[InstanceId("a")], hang_after={InstanceId("a"): 2})
    source = RecoveringTokenSource(cluster, cluster, RecoveryPolicy(deadline_seconds=60))

    async def unserve() -> None:
        await asyncio.sleep(0.2)
        cluster.served = False
        cluster.set_ready([])

    unserving = asyncio.create_task(unserve())
    received: list[int] = []
    with pytest.raises(ModelUnservedError) as raised:
        async for event in source.generate(_request()):
            if isinstance(event, GeneratedToken):
                received.append(event.token_id)
    await unserving
    assert received == SCRIPT[:2]
    assert "tiny-chat was unserved" in str(raised.value)
    assert len(cluster.calls) == 1  # never replayed


async def test_with_no_instance_coming_back_it_gives_up_at_the_deadline_with_a_clear_error() -> None:
    cluster = FakeCluster(ready=[InstanceId("a")], fail_after={InstanceId("a"): 2})
    source = RecoveringTokenSource(
        cluster, cluster, RecoveryPolicy(deadline_seconds=0.5, same_instance_after_seconds=60)
    )
    received: list[int] = []
    started = time.monotonic()
    with pytest.raises(RecoveryFailedError) as raised:
        async for event in source.generate(_request()):
            if isinstance(event, GeneratedToken):
                received.append(event.token_id)
    assert time.monotonic() - started < 3
    assert received == SCRIPT[:2]
    message = str(raised.value)
    assert "req-1" in message and "could not be recovered" in message and "no instance of tiny-chat" in message


async def test_attempts_are_bounded_when_every_replay_breaks() -> None:
    cluster = FakeCluster(ready=[InstanceId("a"), InstanceId("b")], fail_after={InstanceId("a"): 1, InstanceId("b"): 1})
    source = RecoveringTokenSource(cluster, cluster, RecoveryPolicy(max_attempts=2, deadline_seconds=5))
    with pytest.raises(RecoveryFailedError, match="2 replays all failed"):
        await _collect(source, _request())
    assert len(cluster.calls) == 3


async def test_a_failed_instance_is_used_again_when_it_stays_the_only_ready_one() -> None:
    cluster = FakeCluster(ready=[InstanceId("a")], fail_after={InstanceId("a"): 2})
    source = RecoveringTokenSource(
        cluster, cluster, RecoveryPolicy(deadline_seconds=5, same_instance_after_seconds=0.2)
    )

    async def heal() -> None:
        await asyncio.sleep(0.1)
        cluster.fail_after.clear()

    healing = asyncio.create_task(heal())
    events = await _collect(source, _request())
    await healing
    assert _tokens(events) == SCRIPT
    assert [call[1] for call in cluster.calls] == ["req-1", "req-1-r1"]


async def test_refusals_are_not_retried_and_no_instance_at_all_is_model_unavailable() -> None:
    cluster = FakeCluster(ready=[InstanceId("a")], refuse=True)
    source = RecoveringTokenSource(cluster, cluster, RecoveryPolicy(deadline_seconds=5))
    with pytest.raises(PipelineError, match="INVALID_ARGUMENT") as raised:
        await _collect(source, _request())
    assert not isinstance(raised.value, RecoveryFailedError)
    assert len(cluster.calls) == 1
    with pytest.raises(ModelUnavailableError):
        await _collect(RecoveringTokenSource(FakeCluster(), FakeCluster()), _request())


async def test_closing_the_stream_early_cancels_the_run() -> None:
    cluster = FakeCluster(ready=[InstanceId("a")], hang_after={InstanceId("a"): 2})
    source = RecoveringTokenSource(cluster, cluster)
    events = source.generate(_request())
    assert await anext(events) == GeneratedToken(token_id=SCRIPT[0])
    await events.aclose()
    assert len(cluster.calls) == 1


async def test_requests_spread_over_ready_instances_by_runs_in_flight() -> None:
    cluster = FakeCluster(ready=[InstanceId("a"), InstanceId("b")])
    source = RecoveringTokenSource(cluster, cluster, RecoveryPolicy(deadline_seconds=5))
    first = source.generate(_request(4))
    second = source.generate(_request(4))

    assert isinstance(await anext(first), GeneratedToken)  # running on a
    assert isinstance(await anext(second), GeneratedToken)
    await first.aclose()
    await second.aclose()
    third = await _collect(source, _request(2))  # nothing in flight: the first placed again

    assert [instance for instance, _, _ in cluster.calls] == [InstanceId("a"), InstanceId("b"), InstanceId("a")]
    assert _tokens(third) == SCRIPT[:2]
