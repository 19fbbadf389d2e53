"""What this gateway is doing on each model instance: requests in flight, recent tokens/s, tokens so far.

Fed by the generation path (`PipelineClient.generate_on`: one run on one instance) and read by the
dashboard (`GET /v1/cluster`, the `activity` events). The rate counts the tokens of the current
second and the `WINDOW_SECONDS - 1` before it, kept in one-second buckets, so it needs no timer and
stays bounded in memory. Pure: the clock is injected, so tests drive it by hand.
"""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from services.kernel.ids import InstanceId

WINDOW_SECONDS = 5


class InstanceActivitySnapshot(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True)

    requests_in_flight: int
    tokens_per_second: float
    """Tokens streamed over the last `WINDOW_SECONDS` seconds, divided by that window."""
    total_tokens: int


@dataclass
class _InstanceCounters:
    requests_in_flight: int = 0
    total_tokens: int = 0
    buckets: deque[tuple[int, int]] = field(default_factory=deque[tuple[int, int]])
    """(whole second, tokens in it), oldest first, only seconds that had tokens."""


class InstanceActivity:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._instances: dict[InstanceId, _InstanceCounters] = {}

    def _counters(self, instance_id: InstanceId) -> _InstanceCounters:
        counters = self._instances.get(instance_id)
        if counters is None:
            counters = _InstanceCounters()
            self._instances[instance_id] = counters
        return counters

    def request_started(self, instance_id: InstanceId) -> None:
        self._counters(instance_id).requests_in_flight += 1

    def request_ended(self, instance_id: InstanceId) -> None:
        counters = self._counters(instance_id)
        counters.requests_in_flight = max(0, counters.requests_in_flight - 1)

    def tokens_streamed(self, instance_id: InstanceId, count: int = 1) -> None:
        counters = self._counters(instance_id)
        counters.total_tokens += count
        second = int(self._clock())
        if counters.buckets and counters.buckets[-1][0] == second:
            counters.buckets[-1] = (second, counters.buckets[-1][1] + count)
        else:
            counters.buckets.append((second, count))
        self._forget_old(counters, second)

    def _forget_old(self, counters: _InstanceCounters, now_second: int) -> None:
        while counters.buckets and counters.buckets[0][0] <= now_second - WINDOW_SECONDS:
            counters.buckets.popleft()

    def snapshot(self) -> dict[InstanceId, InstanceActivitySnapshot]:
        now_second = int(self._clock())
        snapshots: dict[InstanceId, InstanceActivitySnapshot] = {}
        for instance_id, counters in sorted(self._instances.items()):
            self._forget_old(counters, now_second)
            recent = sum(tokens for _, tokens in counters.buckets)
            snapshots[instance_id] = InstanceActivitySnapshot(
                requests_in_flight=counters.requests_in_flight,
                tokens_per_second=recent / WINDOW_SECONDS,
                total_tokens=counters.total_tokens,
            )
        return snapshots

    def snapshot_document(self) -> dict[str, dict[str, object]]:
        """`snapshot()` as JSON-ready dicts keyed by instance id."""
        return {instance_id: activity.model_dump() for instance_id, activity in self.snapshot().items()}
