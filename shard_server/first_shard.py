"""First shard only: drives each request of the ring (prompt chunks, stop rules, recovery replay).

Runs on the stage worker's thread, as part of it. A new request is prefilled in chunks of the
instance's prefill step (skipping a stored prompt prefix: exact, since only whole chunks are kept);
then every token the last shard samples comes back here: it is reported to the gateway, checked
against the stop rules, and fed as the request's next decode step.

A recovering request (its pipeline broke and the gateway replays its journal) is the same request
again with `replay_tokens`: prompt chunks as before, then each journal token fed one decode step at
a time, the shapes of the original run, so every step computes bitwise what it computed then. The
last shard still samples each step, so the request's random key advances exactly as before; the
journal's token is used, not reported again, and a mismatch is counted and logged (none when
compute is exact).
"""

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

from services.kernel.ids import RequestId
from shard_server.batch_plan import DecodeRow, WaitingPrompt, plan_batch
from shard_server.grammar_mask import GrammarError, grammar_matcher
from shard_server.prefill import prefill_chunks
from shard_server.prefix_cache import prefix_key
from shard_server.ring_messages import (
    Effect,
    RequestFailed,
    RequestFinished,
    SampledToken,
    SampledTokens,
    Segment,
    StartRequest,
    TokenGenerated,
)
from shard_server.sampler import RequestSampler
from shard_server.stage_state import Driver, LoadedStage, PlannedBatch, RequestState

logger = logging.getLogger(__name__)

HOP_OVERHEAD_SAMPLES = 1024
"""Recent ring steps kept for the per-hop overhead percentiles."""


@dataclass(frozen=True)
class _Launch:
    """A sampling request's batch leaving round the ring."""

    started: float
    """`time.perf_counter()` at launch."""
    batch: int
    """The batch's number, counted from this driver's first."""


class FirstShardDriver:
    """The first shard's side of every request: start, plan its steps, take its tokens."""

    def __init__(
        self, emit: Callable[[Effect], None], release: Callable[[RequestId], None], ring_waves: int | None = None
    ) -> None:
        self._emit = emit
        self._release = release
        """Ends a request here and on every shard after it."""
        self._ring_waves = ring_waves
        """Batches kept in flight round the ring (`batch_plan.RING_WAVES_VARIABLE`); None: one per shard."""
        self._in_flight: dict[RequestId, _Launch] = {}
        """Requests whose sampled token is on its way round the ring: when and in which batch it left."""
        self._batches_launched = 0
        self.ring_seconds = 0.0
        self.ring_samples = 0
        self.hop_overheads: deque[float] = deque(maxlen=HOP_OVERHEAD_SAMPLES)
        """First shard of a ring: (ring time - compute time of every shard) / hops, of recent steps."""
        self.hop_overhead_seconds = 0.0
        self.hop_overhead_samples = 0
        """Every sample since start, added up (the deque keeps only recent ones)."""
        self.prefix_hits = 0
        self.reused_prompt_tokens = 0
        self.replayed_tokens = 0
        self.replay_divergences = 0

    def start(self, loaded: LoadedStage, item: StartRequest) -> None:
        if item.request_id in loaded.requests:
            self._emit(RequestFailed(item.request_id, f"request {item.request_id} is already running"))
            return
        driver = Driver(
            prompt_tokens=item.prompt_tokens,
            max_tokens=item.max_tokens,
            stop_token_ids=item.stop_token_ids,
            chunks=prefill_chunks(len(item.prompt_tokens), loaded.prefill_step_size),
            replay_tokens=item.replay_tokens,
        )
        sampling = item.sampling.with_prompt(item.prompt_tokens)
        sampler = None
        if loaded.stage.stage.is_last:
            try:
                grammar = grammar_matcher(sampling.grammar, loaded.grammar_vocabulary, item.replay_tokens)
            except GrammarError as error:
                self._emit(RequestFailed(item.request_id, str(error)))
                return
            sampler = RequestSampler(sampling, grammar)
        cache = loaded.stage.make_cache()
        directory = loaded.directory
        reusable = directory.longest_reusable(item.prompt_tokens, loaded.prefill_step_size) if directory else None
        if reusable is not None and (restored := loaded.prefixes.restore(reusable[0])) is not None:
            key, length = reusable
            cache = restored
            driver.chunks = [chunk for chunk in driver.chunks if chunk[0] >= length]
            driver.reuse_prefix = key
            self.prefix_hits += 1
            self.reused_prompt_tokens += length
        if item.replay_tokens:
            logger.info(
                "request %s resumes: %d prompt tokens, then %d journal tokens replayed one step each",
                item.request_id,
                len(item.prompt_tokens),
                len(item.replay_tokens),
            )
        loaded.requests[item.request_id] = RequestState(cache, sampling, sampler, driver)
        loaded.prefill_waiting.append(item.request_id)

    def on_sampled(self, loaded: LoadedStage, sampled: SampledTokens) -> None:
        """Tokens back from the last shard: one sample of the per-hop overhead, then each token."""
        if sampled.tokens:
            launch = self._in_flight.get(sampled.tokens[0].request_id)
            if launch is not None:
                ring = time.perf_counter() - launch.started
                # Every stage is one hop, the last shard's link back to this one included.
                overhead = max(0.0, ring - sampled.compute_seconds) / max(1, loaded.ring_size)
                self.hop_overheads.append(overhead)
                self.hop_overhead_seconds += overhead
                self.hop_overhead_samples += 1
        for token in sampled.tokens:
            self.on_token(loaded, token)

    def may_launch(self) -> bool:
        """Whether the next batch may start round the ring now.

        With one wave per shard (the default), always, as soon as there are rows. With a set count, only
        while fewer batches are awaited: the next one waits for a wave to come back and leaves with its
        rows and any new prompt chunks, so the waves stay whole. A batch that samples nothing (a middle
        prompt chunk) sends nothing back and is not awaited."""
        if self._ring_waves is None:
            return True
        return len({launch.batch for launch in self._in_flight.values()}) < self._ring_waves

    def on_token(self, loaded: LoadedStage, token: SampledToken) -> None:
        """Report the token (unless replayed), then end the request or queue its next step."""
        launch = self._in_flight.pop(token.request_id, None)
        if launch is not None:
            self.ring_seconds += time.perf_counter() - launch.started
            self.ring_samples += 1
        state = loaded.requests.get(token.request_id)
        if state is None or state.driver is None:
            return  # the request ended while the token travelled
        driver = state.driver
        index = driver.generated
        driver.generated += 1
        token_id = token.token_id
        if index < len(driver.replay_tokens):
            token_id = self._replayed(token.request_id, index, token.token_id, driver.replay_tokens[index])
        else:
            self._emit(
                TokenGenerated(token.request_id, token_id, index, token.logprob, token.top_logprobs, token.embedding)
            )
        reason = None
        if token_id in driver.stop_token_ids:
            reason = "stop"
        elif driver.generated >= driver.max_tokens:
            reason = "length"
        if reason is None:
            loaded.ready.append(DecodeRow(token.request_id, token_id, token.position))
            return
        self._emit(RequestFinished(token.request_id, reason, len(driver.prompt_tokens), driver.generated))
        self._release(token.request_id)

    def _replayed(self, request_id: RequestId, index: int, sampled: int, journal: int) -> int:
        self.replayed_tokens += 1
        if sampled != journal:
            self.replay_divergences += 1
            logger.warning(
                "request %s: replayed step %d sampled token %d, the journal has %d (compute is not exact here)",
                request_id,
                index,
                sampled,
                journal,
            )
        return journal

    def plan(self, loaded: LoadedStage) -> PlannedBatch:
        """The next batch: decode rows of running requests, then prompt chunks within the row budget."""
        decoding = sum(
            1 for state in loaded.requests.values() if state.driver is not None and state.driver.generated > 0
        )
        waves = self._ring_waves or loaded.ring_size
        plan = plan_batch(loaded.ready, self._waiting_prompts(loaded), decoding, waves, loaded.prefill_step_size)
        del loaded.ready[: len(plan.decode_rows)]
        segments: list[Segment] = []
        states: list[RequestState] = []
        tokens: list[int] = []
        for row in plan.decode_rows:
            state = loaded.requests.get(row.request_id)
            if state is None:
                continue
            segments.append(Segment(row.request_id, row.position, 1, True, None))
            states.append(state)
            tokens.append(row.token_id)
        for request_id in plan.prefill_requests:
            state = loaded.requests.get(request_id)
            driver = state.driver if state is not None else None
            if state is None or driver is None:
                continue  # _waiting_prompts offers only requests it holds, with a driver
            segment = self._prompt_chunk(loaded, request_id, state, driver)
            segments.append(segment)
            states.append(state)
            tokens.extend(driver.prompt_tokens[segment.position : segment.position + segment.length])
        started = time.perf_counter()
        self._batches_launched += 1
        for segment in segments:
            if segment.sample:
                self._in_flight[segment.request_id] = _Launch(started, self._batches_launched)
        inputs = loaded.stage.embed(mx.array(tokens, dtype=mx.int32)[None])  # (1, rows, hidden)
        return PlannedBatch(tuple(segments), tuple(states), inputs)

    @staticmethod
    def _waiting_prompts(loaded: LoadedStage) -> list[WaitingPrompt]:
        """Requests with prompt chunks left, in arrival order (ended ones dropped from the queue)."""
        waiting: list[WaitingPrompt] = []
        for request_id in list(loaded.prefill_waiting):
            state = loaded.requests.get(request_id)
            if state is None or state.driver is None:
                loaded.prefill_waiting.remove(request_id)
                continue
            start, end = state.driver.chunks[state.driver.next_chunk]
            waiting.append(WaitingPrompt(request_id, end - start))
        return waiting

    def _prompt_chunk(self, loaded: LoadedStage, request_id: RequestId, state: RequestState, driver: Driver) -> Segment:
        """Takes the request's next prompt chunk; the last one samples the first token."""
        start, end = driver.chunks[driver.next_chunk]
        driver.next_chunk += 1
        last_chunk = driver.next_chunk == len(driver.chunks)
        if last_chunk:
            loaded.prefill_waiting.remove(request_id)
        first_step = not driver.first_step_sent
        driver.first_step_sent = True
        return Segment(
            request_id,
            start,
            end - start,
            last_chunk,
            state.sampling if first_step else None,
            self._prefix_to_store(loaded, driver, end, last_chunk),
            driver.reuse_prefix if first_step else None,
            # The last shard's grammar matcher follows the journal, as this shard does.
            driver.replay_tokens if first_step and state.sampling is not None and state.sampling.grammar else (),
        )

    def _prefix_to_store(self, loaded: LoadedStage, driver: Driver, end: int, last_chunk: bool) -> str | None:
        """The key under which every shard keeps the prompt [0, end) after this chunk, if worth keeping."""
        if last_chunk or end % loaded.prefill_step_size != 0 or loaded.directory is None:
            return None
        key = prefix_key(driver.prompt_tokens[:end])
        return None if key in loaded.directory else key

    def forget(self, request_id: RequestId) -> None:
        self._in_flight.pop(request_id, None)
