"""Which rows the first shard puts in its next batch. Pure (but for reading `STRATA_RING_WAVES`).

Decode rows (one token per running request) go first, at most `decode_cap` of them, so that the
running requests split into the ring's waves: by default one per shard, which circulate the ring at
the same time and keep every shard (each on its own cores) busy. Shards that share one host's cores
(`strata run`) are better served by one wave (`RING_WAVES_VARIABLE`): one shard computes at a time,
on all the cores, with batches twice as large, which read each weight half as often per token.

Then prompt chunks of waiting requests, at most one chunk per request and at most a budget of prompt
rows per batch (the prefill step size), so a burst of new requests is prefilled together in a few
steps, while a long prompt still goes a chunk at a time between decode steps instead of stalling the
running streams.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.kernel.ids import RequestId

logger = logging.getLogger(__name__)

MAX_DECODE_ROWS = 64
RING_WAVES_VARIABLE = "STRATA_RING_WAVES"
"""Batches the first shard keeps in flight round the ring (default: one per shard of the ring)."""


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


def ring_waves_from_environment(environment: Mapping[str, str] | None = None) -> int | None:
    """`STRATA_RING_WAVES` as a positive count; None (one wave per shard) where unset or not one."""
    value = (os.environ if environment is None else environment).get(RING_WAVES_VARIABLE, "").strip()
    if not value:
        return None
    if value.isdigit() and int(value) >= 1:
        return int(value)
    logger.warning("%s=%r is not a positive count: one wave per shard of the ring", RING_WAVES_VARIABLE, value)
    return None


def decode_cap(decoding_requests: int, waves: int) -> int:
    """Rows per batch so that the running requests form `waves` waves round the ring."""
    return max(1, min(MAX_DECODE_ROWS, -(-decoding_requests // max(1, waves))))


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
    waves: int,
    prompt_row_budget: int,
) -> BatchPlan:
    cap = decode_cap(decoding_requests, waves)
    return BatchPlan(tuple(ready[:cap]), prompt_chunks_within(waiting, prompt_row_budget))
