"""A `TokenSource` that survives a shard server's death: the stream pauses, it does not fail.

Every request keeps a journal: its `TokenRequest` (prompt tokens, sampling options with the seed;
the gateway picks a seed for sampled requests, so every request is replayable) and the tokens
already yielded. A run breaks when the pipeline fails (stream error, token deadline) or when the
coordinator's event stream says the instance serving it was removed or failed. Then the broken
call is cancelled, a ready instance is awaited (preferably another one: the coordinator re-places
the instance once the dead shard's lease expires), and the request runs again with the journal's
tokens as `replay_tokens`: the first shard prefills the prompt in the same chunks and feeds those
tokens one decode step each, so the computation has the original shapes and, for greedy and seeded
sampling, continues bitwise where it was (DESIGN.md explains why a one-chunk replay would not be
exact with float32 weights). Only tokens after the journal come back, so the client sees a pause.

Bounded: at most `max_attempts` replays per request, and at most `deadline_seconds` spent
recovering in total (waiting for an instance and replaying until a new token arrives); after that a
`RecoveryFailedError` says what happened. Refusals of the request itself (invalid, overloaded) and
`ModelUnavailableError` before the first run are raised as they are, never retried.

Each run is its own call with id `<request id>-r<attempt>`, so a shard that still holds the broken
run cannot confuse the two, and every log line carries the request id.
"""

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from gateway.cluster_view import ReadyInstance
from gateway.token_source import (
    GeneratedToken,
    ModelUnavailableError,
    ModelUnservedError,
    PipelineError,
    RecoveryFailedError,
    TokenEvent,
    TokenRequest,
)
from services.kernel.ids import InstanceId, ModelId, RequestId

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryPolicy:
    max_attempts: int = 3
    """Replays per request after the first run."""
    deadline_seconds: float = 120.0
    """Total time a request may spend recovering (from each failure to its next token)."""
    same_instance_after_seconds: float = 15.0
    """After this long without another ready instance, run again on the one that failed (the failure
    may have been passing); longer than a shard lease, so a dead shard's instance is gone by then."""

    @classmethod
    def from_environment(cls) -> "RecoveryPolicy":
        """Defaults, overridden by `STRATA_RECOVERY_ATTEMPTS` and `STRATA_RECOVERY_DEADLINE_SECONDS`."""
        defaults = cls()
        attempts = os.environ.get("STRATA_RECOVERY_ATTEMPTS")
        deadline = os.environ.get("STRATA_RECOVERY_DEADLINE_SECONDS")
        return cls(
            max_attempts=int(attempts) if attempts else defaults.max_attempts,
            deadline_seconds=float(deadline) if deadline else defaults.deadline_seconds,
        )


class RecoveryCounts(BaseModel):
    """What recovery did since the gateway started (its Prometheus metrics read these)."""

    model_config = ConfigDict(frozen=True, strict=True)

    replays: int = 0
    """Runs started again after a broken one (`<request id>-r<n>`)."""
    replayed_tokens: int = 0
    """Journal tokens those replays fed again."""
    recoveries_failed: int = 0
    """Requests given up on (out of replays or of recovery time)."""


class InstanceWatch(Protocol):
    """What recovery needs from the cluster view."""

    def ready_instance(
        self, model_id: ModelId, avoiding: InstanceId | None = None, load: Mapping[InstanceId, int] | None = None
    ) -> ReadyInstance | None: ...

    async def wait_for_change(self, timeout_seconds: float) -> None: ...

    async def wait_until_not_serving(self, instance_id: InstanceId) -> None: ...

    def is_served(self, model_id: ModelId) -> bool: ...


class InstanceRuns(Protocol):
    """What recovery needs from the pipeline client: one run of a request on one instance."""

    def generate_on(
        self, instance: ReadyInstance, request: TokenRequest, call_id: RequestId, replay_tokens: tuple[int, ...]
    ) -> AsyncIterator[TokenEvent]: ...


@dataclass
class Journal:
    """What a request has produced so far: enough to run it again from where it is."""

    request: TokenRequest
    tokens: list[int] = field(default_factory=list[int])
    attempts: int = 0
    """Replays started so far."""
    recovering_seconds: float = 0.0
    outage_started: float | None = None
    failures: list[str] = field(default_factory=list[str])

    def call_id(self) -> RequestId:
        base = self.request.request_id
        return base if self.attempts == 0 else RequestId(f"{base}-r{self.attempts}")

    def recovery_seconds_used(self, now: float) -> float:
        ongoing = 0.0 if self.outage_started is None else now - self.outage_started
        return self.recovering_seconds + ongoing


class RecoveringTokenSource:
    def __init__(
        self,
        runs: InstanceRuns,
        view: InstanceWatch,
        policy: RecoveryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runs = runs
        self._view = view
        self._policy = policy or RecoveryPolicy()
        self._clock = clock
        self._running: Counter[InstanceId] = Counter()
        """Runs in flight per instance: a request goes to the least busy (instances of one model)."""
        self._counts = RecoveryCounts()

    @property
    def counts(self) -> RecoveryCounts:
        return self._counts

    async def generate(self, request: TokenRequest) -> AsyncGenerator[TokenEvent]:
        journal = Journal(request)
        instance = self._view.ready_instance(request.model_id, load=self._running)
        if instance is None:
            raise ModelUnavailableError(f"no instance of {request.model_id} is ready yet")
        while True:
            try:
                async with aclosing(self._run(instance, journal)) as run:
                    async for event in run:
                        if journal.outage_started is not None:
                            self._recovered(journal)
                        if isinstance(event, GeneratedToken):
                            journal.tokens.append(event.token_id)
                        yield event
                        if not isinstance(event, GeneratedToken):
                            return  # finished
                raise PipelineError(f"request {request.request_id}: the token stream ended without a finish event")
            except PipelineError as error:
                if not error.retryable:
                    raise
                instance = await self._after_failure(journal, instance.instance_id, error)

    async def _run(self, instance: ReadyInstance, journal: Journal) -> AsyncGenerator[TokenEvent]:
        """One run on `instance`; raises `PipelineError` as well when the coordinator drops it."""
        call_id = journal.call_id()
        events = self._runs.generate_on(instance, journal.request, call_id, tuple(journal.tokens))
        removed = asyncio.create_task(self._view.wait_until_not_serving(instance.instance_id))
        step: asyncio.Future[TokenEvent] | None = None
        self._running[instance.instance_id] += 1
        try:
            while True:
                step = asyncio.ensure_future(anext(events))
                await asyncio.wait({step, removed}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    with suppress(asyncio.CancelledError, StopAsyncIteration, PipelineError):
                        await step
                    raise PipelineError(f"request {call_id}: the coordinator removed instance {instance.instance_id}")
                try:
                    event = step.result()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self._running[instance.instance_id] -= 1
            if self._running[instance.instance_id] <= 0:
                del self._running[instance.instance_id]
            removed.cancel()
            if step is not None and not step.done():
                # Cancelled while waiting (the client left): the pending read holds `events`, which
                # could not be closed (so the shards would run on) until it ends.
                step.cancel()
                with suppress(asyncio.CancelledError, StopAsyncIteration, PipelineError):
                    await step
            if isinstance(events, AsyncGenerator):
                with suppress(Exception):  # closing a broken run must not hide why it broke
                    await events.aclose()

    async def _after_failure(self, journal: Journal, failed: InstanceId, error: PipelineError) -> ReadyInstance:
        """Waits (bounded) for an instance to replay on; raises `RecoveryFailedError` when out of budget."""
        request_id = journal.request.request_id
        now = self._clock()
        if journal.outage_started is None:
            journal.outage_started = now
        journal.failures.append(str(error))
        model_id = journal.request.model_id
        if not self._view.is_served(model_id):
            logger.info("request %s: model %s was unserved after %d tokens", request_id, model_id, len(journal.tokens))
            raise ModelUnservedError(
                f"The model {model_id} was unserved while request {request_id} ran, after "
                f"{len(journal.tokens)} tokens; nothing serves it any more."
            )
        logger.warning(
            "request %s: run %d broke after %d tokens (%s); recovering",
            request_id,
            journal.attempts,
            len(journal.tokens),
            error,
        )
        if journal.attempts >= self._policy.max_attempts:
            raise self._give_up(journal, f"{journal.attempts} replays all failed")
        instance = await self._wait_for_instance(journal, failed)
        journal.attempts += 1
        self._counts = self._counts.model_copy(
            update={
                "replays": self._counts.replays + 1,
                "replayed_tokens": self._counts.replayed_tokens + len(journal.tokens),
            }
        )
        logger.info(
            "request %s: replaying %d prompt and %d generated tokens on instance %s as %s",
            request_id,
            len(journal.request.prompt_tokens),
            len(journal.tokens),
            instance.instance_id,
            journal.call_id(),
        )
        return instance

    async def _wait_for_instance(self, journal: Journal, failed: InstanceId) -> ReadyInstance:
        model_id = journal.request.model_id
        outage_started = journal.outage_started if journal.outage_started is not None else self._clock()
        while True:
            now = self._clock()
            left = self._policy.deadline_seconds - journal.recovery_seconds_used(now)
            if left <= 0:
                raise self._give_up(journal, f"no instance of {model_id} was ready within the recovery deadline")
            instance = self._view.ready_instance(model_id, avoiding=failed, load=self._running)
            if instance is None and now - outage_started >= self._policy.same_instance_after_seconds:
                instance = self._view.ready_instance(model_id, load=self._running)
            if instance is not None:
                return instance
            await self._view.wait_for_change(min(left, 1.0))

    def _recovered(self, journal: Journal) -> None:
        if journal.outage_started is None:
            return
        paused = self._clock() - journal.outage_started
        journal.recovering_seconds += paused
        journal.outage_started = None
        logger.info(
            "request %s: recovered after %.1f s (%d replays); streaming on",
            journal.request.request_id,
            paused,
            journal.attempts,
        )

    def _give_up(self, journal: Journal, why: str) -> RecoveryFailedError:
        self._counts = self._counts.model_copy(update={"recoveries_failed": self._counts.recoveries_failed + 1})
        # Told to the client: no addresses or internals (the failures themselves are logged).
        message = (
            f"The model pipeline failed while serving request {journal.request.request_id} after "
            f"{len(journal.tokens)} tokens and could not be recovered: {why} "
            f"({self._policy.max_attempts} replays and {self._policy.deadline_seconds:.0f} s allowed)."
        )
        logger.error(
            "request %s: giving up: %s; failures: %s", journal.request.request_id, message, " | ".join(journal.failures)
        )
        return RecoveryFailedError(message)
