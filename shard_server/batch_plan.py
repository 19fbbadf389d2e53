"""Which rows the first shard puts in its next batch. Pure.

Decode rows (one token per running request) go first, at most `decode_cap` of them, so that with N
shards the running requests split into about N waves that circulate the ring at the same time and
keep every shard busy. Then prompt chunks of waiting requests, at most one chunk per request and at
most a budget of prompt rows per batch (the prefill step size), so a burst of new requests is
prefilled together in a few steps, while a long prompt still goes a chunk at a time between decode
steps instead of stalling the running streams.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from services.kernel.ids import RequestId

MAX_DECODE_ROWS = 64


@dataclass(frozen=True)
class DecodeRow:
    request_id: RequestId
    token_id: int
    position: int


@dataclass(frozen=True)
class WaitingPrompt:
    """A request with prompt chunks left, and the rows of its next chunk."""

    request_id: RequestId
    next_chunk_rows: int


@dataclass(frozen=True)
class BatchPlan:
    decode_rows: tuple[DecodeRow, ...]
    prefill_requests: tuple[RequestId, ...]
    """Requests whose next prompt chunk runs in this batch, in arrival order."""


def decode_cap(decoding_requests: int, ring_size: int) -> int:
    """Rows per batch so that the running requests form one wave per shard of the ring."""
    waves = max(1, ring_size)
    return max(1, min(MAX_DECODE_ROWS, -(-decoding_requests // waves)))


def prompt_chunks_within(waiting: Sequence[WaitingPrompt], prompt_row_budget: int) -> tuple[RequestId, ...]:
    """The oldest waiting prompt always; then, in arrival order, every next chunk that still fits.

    The oldest goes first whatever its size (a chunk is never larger than the prefill step), so no
    prompt waits behind smaller ones for ever.
    """
    taken: list[RequestId] = []
    rows = 0
    for prompt in waiting:
        if taken and rows + prompt.next_chunk_rows > prompt_row_budget:
            continue
        taken.append(prompt.request_id)
        rows += prompt.next_chunk_rows
        if rows >= prompt_row_budget:
            break
    return tuple(taken)


def plan_batch(
    ready: Sequence[DecodeRow],
    waiting: Sequence[WaitingPrompt],
    decoding_requests: int,
    ring_size: int,
    prompt_row_budget: int,
) -> BatchPlan:
    cap = decode_cap(decoding_requests, ring_size)
    return BatchPlan(tuple(ready[:cap]), prompt_chunks_within(waiting, prompt_row_budget))
