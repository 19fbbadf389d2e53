"""Admission on the first shard: a request runs only while its KV cache fits the stage's budget.

Each admitted request reserves `prompt tokens + max_tokens` tokens of KV room (its worst case: the
cache never holds more). A request is admitted when its reservation fits the budget and, if set,
fewer than `max_active_requests` run; otherwise it waits in a bounded FIFO queue for at most
`max_wait_seconds`. A full queue or an expired wait refuses the request with `AdmissionRefusedError`
(a call answers RESOURCE_EXHAUSTED with a retry-after hint in its trailing metadata), so load beyond the budget never
grows memory. Every shard of the ring holds the same tokens per layer, so admitting at the first
shard bounds the KV caches on all of them.
"""

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass, replace

from services.kernel.ids import RequestId
from services.kernel.status_errors import ResourceExhaustedError
from services.wire.generate_call import RETRY_AFTER_METADATA

logger = logging.getLogger(__name__)

DEFAULT_MAX_WAITING = 64
"""Requests that may wait for room at once; beyond that they are refused at once."""
DEFAULT_MAX_WAIT_SECONDS = 30.0
"""Longest wait for room before a queued request is refused."""
DEFAULT_RETRY_AFTER_SECONDS = 2
"""The retry hint of a refusal: about the time a short request takes to finish and free room."""


@dataclass(frozen=True)
class AdmissionLimits:
    kv_budget_tokens: int | None = None
    """KV room of all admitted requests together, in tokens; None: unlimited."""
    max_active_requests: int | None = None
    """Requests running at once; None: only the KV budget limits them."""
    max_waiting: int = DEFAULT_MAX_WAITING
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    retry_after_seconds: int = DEFAULT_RETRY_AFTER_SECONDS


@dataclass(frozen=True)
class AdmissionStats:
    active_requests: int
    waiting_requests: int
    reserved_tokens: int
    rejected_requests: int
    kv_budget_tokens: int | None


class AdmissionRefusedError(ResourceExhaustedError):
    """The request cannot run now; the client may retry after `retry_after_seconds` (trailing metadata)."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, ((RETRY_AFTER_METADATA, str(retry_after_seconds)),))
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class Ticket:
    """An admitted request's reservation; give it back with `AdmissionGate.release`."""

    request_id: RequestId
    tokens: int


@dataclass
class _Waiter:
    ticket: Ticket
    granted: asyncio.Future[None]


class AdmissionGate:
    """Used from one event loop only; nothing here blocks."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self._limits = limits
        self._active: dict[RequestId, Ticket] = {}
        self._reserved = 0
        self._waiting: deque[_Waiter] = deque()
        self._rejected = 0

    @property
    def limits(self) -> AdmissionLimits:
        return self._limits

    def configure(self, limits: AdmissionLimits) -> None:
        """New limits (a new stage was assigned); running requests keep their reservations."""
        self._limits = limits
        self._grant_waiters()

    def stats(self) -> AdmissionStats:
        return AdmissionStats(
            len(self._active), len(self._waiting), self._reserved, self._rejected, self._limits.kv_budget_tokens
        )

    async def admit(self, request_id: RequestId, tokens: int) -> Ticket:
        """Waits for room (bounded); raises `AdmissionRefusedError` when there is none."""
        ticket = Ticket(request_id, tokens)
        budget = self._limits.kv_budget_tokens
        if budget is not None and tokens > budget:
            raise self._refuse(
                request_id, f"the request needs {tokens} tokens of KV cache, more than this shard's {budget}"
            )
        if not self._waiting and self._fits(ticket):
            self._take(ticket)
            return ticket
        if len(self._waiting) >= self._limits.max_waiting:
            raise self._refuse(
                request_id, f"the shard is at its KV budget and {len(self._waiting)} requests already wait"
            )
        waiter = _Waiter(ticket, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), timeout=self._limits.max_wait_seconds)
        except TimeoutError:
            self._drop_waiter(waiter)
            raise self._refuse(
                request_id, f"no KV room freed up within {self._limits.max_wait_seconds:g} s at this shard's budget"
            ) from None
        except asyncio.CancelledError:
            self._drop_waiter(waiter)
            raise
        return ticket

    def release(self, ticket: Ticket) -> None:
        if self._active.pop(ticket.request_id, None) is None:
            return
        self._reserved -= ticket.tokens
        self._grant_waiters()

    def _fits(self, ticket: Ticket) -> bool:
        limits = self._limits
        if limits.max_active_requests is not None and len(self._active) >= limits.max_active_requests:
            return False
        return limits.kv_budget_tokens is None or self._reserved + ticket.tokens <= limits.kv_budget_tokens

    def _take(self, ticket: Ticket) -> None:
        self._active[ticket.request_id] = ticket
        self._reserved += ticket.tokens

    def _grant_waiters(self) -> None:
        """First come, first served: the head of the queue blocks later, smaller requests."""
        while self._waiting and self._fits(self._waiting[0].ticket):
            waiter = self._waiting.popleft()
            self._take(waiter.ticket)
            waiter.granted.set_result(None)

    def _drop_waiter(self, waiter: _Waiter) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)
            self._grant_waiters()  # a large head leaving may let smaller requests in
        elif waiter.granted.done():
            self.release(waiter.ticket)  # granted in the same instant the wait ended

    def _refuse(self, request_id: RequestId, message: str) -> AdmissionRefusedError:
        logger.info("refused request %s: %s", request_id, message)
        self._rejected += 1
        return AdmissionRefusedError(message, self._limits.retry_after_seconds)


def with_sequence_cap(limits: AdmissionLimits, max_sequences: int) -> AdmissionLimits:
    """`limits` running at most `max_sequences` requests at once (0: unchanged), as the coordinator
    asks for a model whose sliding layers are reserved room for that many windows only."""
    if max_sequences <= 0:
        return limits
    current = limits.max_active_requests
    return replace(limits, max_active_requests=max_sequences if current is None else min(current, max_sequences))


def kv_budget_tokens(budget_bytes_per_layer: int, bytes_per_token_per_layer: int) -> int | None:
    """The coordinator's per-layer KV reservation in tokens; None when it sent none."""
    if budget_bytes_per_layer <= 0 or bytes_per_token_per_layer <= 0:
        return None
    return max(1, math.floor(budget_bytes_per_layer / bytes_per_token_per_layer))
