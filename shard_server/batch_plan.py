"""Which rows the first shard puts in its next batch. Pure.

Decode rows (one token per running request) go first, at most `decode_cap` of them, so that with N
shards the running requests split into about N waves that circulate the ring at the same time and
keep every shard busy. Then at most one prompt chunk, so a long prompt is prefilled a chunk at a
time between decode steps instead of stalling the running streams.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from services.ids import RequestId

MAX_DECODE_ROWS = 64


@dataclass(frozen=True)
class DecodeRow:
    request_id: RequestId
    token_id: int
    position: int


@dataclass(frozen=True)
class BatchPlan:
    decode_rows: tuple[DecodeRow, ...]
    prefill_request: RequestId | None


def decode_cap(decoding_requests: int, ring_size: int) -> int:
    """Rows per batch so that the running requests form one wave per shard of the ring."""
    waves = max(1, ring_size)
    return max(1, min(MAX_DECODE_ROWS, -(-decoding_requests // waves)))


def plan_batch(
    ready: Sequence[DecodeRow], prefill_waiting: Sequence[RequestId], decoding_requests: int, ring_size: int
) -> BatchPlan:
    cap = decode_cap(decoding_requests, ring_size)
    prefill = prefill_waiting[0] if prefill_waiting else None
    return BatchPlan(tuple(ready[:cap]), prefill)
