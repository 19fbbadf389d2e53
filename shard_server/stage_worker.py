"""The one thread that owns a shard's model: continuous batching over every request it holds.

The gRPC service only decodes messages and submits them here; every forward pass, sample and cache
change happens on this thread, never on the event loop. What the worker wants done outside
(send to the next shard, report to the gateway) goes out through the `emit` callback.

Each loop takes in everything that arrived, then runs one batch. On the first shard a batch holds
the decode rows of running requests (capped so they circulate in one wave per shard of the ring)
and at most one prompt chunk; other shards run the batches they receive, in order. Requests join
and leave between steps. Per request each shard keeps a KV cache; the first shard also drives the
request (prompt chunks, stop conditions) and the last shard keeps its sampler with the request's
own random key.

The counters' snapshot (`stats`) is taken only when asked for (`fresh_stats`), between batches:
work done after a batch goes out holds the interpreter lock that the event loop needs to send it.
"""

import bisect
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import mlx.core as mx

from services.kernel.ids import RequestId
from services.platform.mlx_typing import evaluate, float32_bytes
from services.platform.tensor_codec import TensorDecodeError, decode, encode
from shard_server.batch_plan import MAX_DECODE_ROWS
from shard_server.batched_forward import RequestRows
from shard_server.blas_threads import BlasThreads
from shard_server.first_shard import FirstShardDriver
from shard_server.grammar_mask import GrammarError, GrammarVocabulary, grammar_matcher
from shard_server.model_stage import ModelLoadError, ModelStage
from shard_server.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES, PrefixDirectory, prefixes_reusable
from shard_server.ring_messages import (
    BatchStep,
    CancelRequest,
    Effect,
    FailRequest,
    ForgetPrefix,
    LinkBroken,
    LoadStage,
    ReleaseRequest,
    RequestFailed,
    SampledToken,
    SampledTokens,
    Segment,
    SendToNext,
    StageLoadFailed,
    StageLoadSucceeded,
    StartRequest,
    WorkItem,
)
from shard_server.sampler import RequestSampler, sample_rows
from shard_server.stage_state import (
    BATCH_ROWS_BOUNDS,
    LoadedStage,
    PlannedBatch,
    RequestState,
    StageStats,
    cache_arrays,
)

logger = logging.getLogger(__name__)


RequestEnding = Literal["released", "failed here", "failed upstream", "dropped with its stage"]
"""How a request ends on a shard (`StageWorker._end_request`)."""


class RequestCannotContinueError(Exception):
    """A request cannot go on (bad position, unknown request, bad tensor)."""


@dataclass(frozen=True)
class _StatsWanted:
    reply: Callable[[StageStats], None]
    """Called on the worker thread with a fresh snapshot."""


class StageWorker:
    def __init__(
        self, emit: Callable[[Effect], None], blas_threads: BlasThreads | None = None, ring_waves: int | None = None
    ) -> None:
        self._emit = emit
        self._blas_threads = blas_threads
        self._queue: queue.Queue[WorkItem | _StatsWanted | None] = queue.Queue()
        self._loaded: LoadedStage | None = None
        self._steps = 0
        self._batched_rows = 0
        self._batch_rows_counts = [0] * (len(BATCH_ROWS_BOUNDS) + 1)
        """Steps per rows bucket (`StageStats.batch_rows_buckets`)."""
        self._stats_lock = threading.Lock()
        self._compute_seconds = 0.0
        self._first = FirstShardDriver(emit, lambda request_id: self._end_request(request_id, "released"), ring_waves)
        self._stats = StageStats()
        self._thread = threading.Thread(target=self._run, name="stage-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def submit(self, item: WorkItem) -> None:
        """Thread-safe; items are taken in submission order."""
        self._queue.put(item)

    def stats(self) -> StageStats:
        """The last snapshot taken (at load, or for `fresh_stats`)."""
        with self._stats_lock:
            return self._stats

    def fresh_stats(self, timeout_seconds: float) -> StageStats:
        """Blocks (never call it on the event loop) for a snapshot the worker takes before its next batch;
        the last snapshot when the worker stays busy longer (a long prefill chunk, a stalled link)."""
        answer: Future[StageStats] = Future()
        self._queue.put(_StatsWanted(answer.set_result))
        try:
            return answer.result(timeout_seconds)
        except TimeoutError:
            return self.stats()

    # --- the loop ---

    def _run(self) -> None:
        while True:
            if not self._has_batch_to_run():
                item = self._queue.get()
                if item is None:
                    return
                self._take_guarded(item)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                self._take_guarded(item)
            if self._has_batch_to_run():
                self._run_one_batch()

    def _take_guarded(self, item: WorkItem | _StatsWanted) -> None:
        try:
            if isinstance(item, _StatsWanted):
                item.reply(self._refresh_stats())
            else:
                self._take(item)
        except Exception:  # the worker must outlive any single bad item
            logger.exception("stage worker failed on %s", type(item).__name__)

    def _has_batch_to_run(self) -> bool:
        loaded = self._loaded
        if loaded is None:
            return False
        if loaded.stage.stage.is_first:
            return bool(loaded.ready or loaded.prefill_waiting) and self._first.may_launch()
        return bool(loaded.received)

    def _refresh_stats(self) -> StageStats:
        loaded = self._loaded
        if loaded is None:
            snapshot = StageStats(
                steps=self._steps,
                batched_rows=self._batched_rows,
                batch_rows_buckets=tuple(self._batch_rows_counts),
                compute_seconds=self._compute_seconds,
            )
        else:
            kv_bytes = sum(cache.nbytes for state in loaded.requests.values() for cache in state.cache)
            snapshot = StageStats(
                instance_id=loaded.instance_id,
                start_layer=loaded.stage.stage.start_layer,
                end_layer=loaded.stage.stage.end_layer,
                active_requests=len(loaded.requests),
                kv_cache_bytes=kv_bytes,
                steps=self._steps,
                batched_rows=self._batched_rows,
                batch_rows_buckets=tuple(self._batch_rows_counts),
                batch_invariant=loaded.stage.batch_invariant,
                batched_layers=sum(plan.batched for plan in loaded.stage.layer_plans),
                native_attention=loaded.stage.native_attention is not None,
                weight_bytes=loaded.stage.weight_bytes,
                compact_weight_matrices=len(loaded.stage.weight_storage.float16_modules)
                + len(loaded.stage.weight_storage.code_modules),
                compute_seconds=self._compute_seconds,
                ring_seconds=self._first.ring_seconds,
                ring_samples=self._first.ring_samples,
                prefix_cache_bytes=loaded.prefixes.nbytes,
                prefix_hits=self._first.prefix_hits,
                reused_prompt_tokens=self._first.reused_prompt_tokens,
                replayed_tokens=self._first.replayed_tokens,
                replay_divergences=self._first.replay_divergences,
                hop_overheads=tuple(self._first.hop_overheads),
                hop_overhead_seconds=self._first.hop_overhead_seconds,
                hop_overhead_samples=self._first.hop_overhead_samples,
            )
        with self._stats_lock:
            self._stats = snapshot
        return snapshot

    # --- taking in work ---

    def _take(self, item: WorkItem) -> None:
        match item:
            case LoadStage():
                self._load(item)
            case StartRequest():
                self._start(item)
            case BatchStep():
                self._receive_batch(item)
            case SampledTokens():
                loaded = self._loaded
                if loaded is not None:
                    self._first.on_sampled(loaded, item)
            case ReleaseRequest() | CancelRequest():
                self._end_request(item.request_id, "released")
            case FailRequest():
                self._end_request(item.request_id, "failed upstream", item.message)
            case ForgetPrefix():
                self._forget_prefix(item.key)
            case LinkBroken():
                loaded = self._loaded
                for request_id in list(loaded.requests) if loaded is not None else []:
                    self._end_request(request_id, "failed here", item.message)

    def _load(self, item: LoadStage) -> None:
        previous = self._loaded
        self._loaded = None
        if previous is not None:
            for request_id in list(previous.requests):
                self._end_request(
                    request_id, "dropped with its stage", "the model instance was re-placed", stage=previous
                )
        try:
            stage = ModelStage(item.model_dir, item.stage, item.compute_dtype)
            most_threads = self._blas_threads.most if self._blas_threads is not None else 1
            batched = stage.check_batching(item.prefill_step_size + MAX_DECODE_ROWS, most_threads)
        except (ModelLoadError, OSError, ValueError) as error:
            self._refresh_stats()
            self._emit(StageLoadFailed(item.instance_id, str(error)))
            return
        self._loaded = LoadedStage(item.instance_id, stage, item.prefill_step_size, max(1, item.ring_size))
        if item.stage.is_first and prefixes_reusable(stage.config):
            self._loaded.directory = PrefixDirectory(DEFAULT_PREFIX_CACHE_BYTES)
        if item.stage.is_last:
            self._loaded.grammar_vocabulary = GrammarVocabulary(item.model_dir, stage.config)
        logger.info(
            "loaded layers [%d, %d) of %d for instance %s in %s (%d bytes; %s; %s); %s; %s",
            item.stage.start_layer,
            item.stage.end_layer,
            item.stage.num_layers,
            item.instance_id,
            item.compute_dtype,
            stage.weight_bytes,
            stage.weight_storage.describe(),
            stage.fused_ops.describe(),
            "rows of different requests share batches (row results checked independent of batch size)"
            if batched
            else f"rows of different requests share batches in {sum(plan.batched for plan in stage.layer_plans)} "
            f"of {len(stage.layer_plans)} layers; the others run each request alone (batch-invariant mode)",
            "batched attention in one native call per layer (checked bitwise against MLX's)"
            if stage.native_attention is not None
            else "attention through MLX ops, per request",
        )
        self._refresh_stats()
        self._emit(StageLoadSucceeded(item.instance_id, stage.weight_bytes, stage.config))

    def _start(self, item: StartRequest) -> None:
        loaded = self._loaded
        if loaded is None:
            self._emit(RequestFailed(item.request_id, "this shard has no model loaded"))
            return
        if not loaded.stage.stage.is_first:
            self._emit(RequestFailed(item.request_id, "requests must start at the first shard of the instance"))
            return
        self._first.start(loaded, item)

    def _receive_batch(self, item: BatchStep) -> None:
        loaded = self._loaded
        if loaded is None or loaded.stage.stage.is_first:
            reason = "this shard has no model loaded" if loaded is None else "the first shard takes no hidden states"
            for segment in item.segments:
                self._end_request(segment.request_id, "failed here", reason)
            return
        loaded.received.append(item)

    # --- running a batch ---

    def _run_one_batch(self) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        planned = self._first.plan(loaded) if loaded.stage.stage.is_first else self._plan_received(loaded)
        if planned is None or not planned.segments:
            return
        if self._blas_threads is not None:
            loaded.stage.use_threads(self._blas_threads.fit(len(loaded.requests)))
        started = time.perf_counter()
        try:
            self._compute(loaded, planned)
            self._compute_seconds += time.perf_counter() - started
        except (RequestCannotContinueError, TensorDecodeError, ValueError) as error:
            for segment in planned.segments:
                self._end_request(segment.request_id, "failed here", str(error))

    def _plan_received(self, loaded: LoadedStage) -> PlannedBatch | None:
        batch = loaded.received.popleft()
        rows = sum(segment.length for segment in batch.segments)
        max_elements = (loaded.prefill_step_size + MAX_DECODE_ROWS) * max(1, loaded.stage.hidden_size)
        try:
            hidden = decode(batch.hidden, max_elements=max_elements)
        except TensorDecodeError as error:
            for segment in batch.segments:
                self._end_request(segment.request_id, "failed here", str(error))
            return None
        if hidden.shape != (1, rows, loaded.stage.hidden_size):
            for segment in batch.segments:
                self._end_request(
                    segment.request_id, "failed here", f"hidden states of shape {hidden.shape} for {rows} rows"
                )
            return None
        segments: list[Segment] = []
        states: list[RequestState] = []
        kept: list[mx.array] = []
        start = 0
        for segment in batch.segments:
            rows_of_segment = hidden[:, start : start + segment.length]
            start += segment.length
            state = self._state_for(loaded, segment)
            if state is None:
                continue
            segments.append(segment)
            states.append(state)
            kept.append(rows_of_segment)
        if not kept:
            return None
        inputs = kept[0] if len(kept) == 1 else mx.concatenate(kept, axis=1)
        return PlannedBatch(tuple(segments), tuple(states), inputs, batch.compute_seconds)

    def _state_for(self, loaded: LoadedStage, segment: Segment) -> RequestState | None:
        """The segment's request state (created on its first step); None after failing it."""
        state = loaded.requests.get(segment.request_id)
        if state is None:
            if segment.reuse_prefix is not None:
                restored = loaded.prefixes.restore(segment.reuse_prefix)
                if restored is None:
                    self._end_request(
                        segment.request_id,
                        "failed here",
                        f"prompt prefix {segment.reuse_prefix} is not stored on this shard",
                    )
                    return None
                state = RequestState(restored)
            elif segment.position != 0:
                self._end_request(
                    segment.request_id,
                    "failed here",
                    f"unknown request {segment.request_id} at position {segment.position}",
                )
                return None
            else:
                state = RequestState(loaded.stage.make_cache())
            loaded.requests[segment.request_id] = state
        if state.cache[0].offset != segment.position:
            self._end_request(
                segment.request_id,
                "failed here",
                f"request {segment.request_id} is at position {state.cache[0].offset}, step says {segment.position}",
            )
            return None
        if segment.sampling is not None:
            state.sampling = segment.sampling
            if loaded.stage.stage.is_last and state.sampler is None:
                try:
                    grammar = grammar_matcher(
                        segment.sampling.grammar, loaded.grammar_vocabulary, segment.grammar_replay_tokens
                    )
                except GrammarError as error:
                    self._end_request(segment.request_id, "failed here", str(error))
                    return None
                state.sampler = RequestSampler(segment.sampling, grammar)
        return state

    def _compute(self, loaded: LoadedStage, planned: PlannedBatch) -> None:
        started = time.perf_counter()
        stage = loaded.stage
        requests: list[RequestRows] = []
        row = 0
        for segment, state in zip(planned.segments, planned.states, strict=True):
            requests.append(RequestRows(state.cache, row, segment.length))
            row += segment.length
        hidden = stage.run_layers(planned.inputs, requests)  # (1, rows, hidden)
        self._steps += 1
        self._batched_rows += row
        self._batch_rows_counts[bisect.bisect_left(BATCH_ROWS_BOUNDS, row)] += 1
        if not stage.stage.is_last:
            encoded = encode(hidden)
            computed = planned.upstream_compute_seconds + time.perf_counter() - started
            self._emit(SendToNext(BatchStep(planned.segments, encoded, computed)))
        else:
            self._sample(loaded, planned, requests, hidden, started)
        for segment, state in zip(planned.segments, planned.states, strict=True):
            if segment.store_prefix is not None:
                self._store_prefix(loaded, segment.store_prefix, state, segment.position + segment.length)

    def _store_prefix(self, loaded: LoadedStage, key: str, state: RequestState, length: int) -> None:
        nbytes = loaded.prefixes.put(key, state.cache, length)
        if loaded.directory is None:
            return
        for evicted in loaded.directory.record(key, nbytes):
            self._forget_prefix(evicted)

    def _forget_prefix(self, key: str) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        loaded.prefixes.drop(key)
        if not loaded.stage.stage.is_last:
            self._emit(SendToNext(ForgetPrefix(key)))

    def _sample(
        self,
        loaded: LoadedStage,
        planned: PlannedBatch,
        requests: list[RequestRows],
        hidden: mx.array,
        started: float,
    ) -> None:
        sampled_rows = [
            rows.start + rows.length - 1
            for segment, rows in zip(planned.segments, requests, strict=True)
            if segment.sample
        ]
        if not sampled_rows:
            evaluate(cache_arrays(planned.states))
            return
        logits = loaded.stage.logits(mx.take(hidden, mx.array(sampled_rows), axis=1))  # (1, sampled, vocab)
        sampled: list[tuple[Segment, RequestSampler]] = []
        for segment, state in zip(planned.segments, planned.states, strict=True):
            if not segment.sample:
                continue
            if state.sampler is None:
                raise RequestCannotContinueError(
                    f"request {segment.request_id} reached the last shard without sampling options"
                )
            sampled.append((segment, state.sampler))
        choices = sample_rows([sampler for _, sampler in sampled], logits)
        embeddings = self._embeddings(loaded, hidden, sampled_rows, [sampler for _, sampler in sampled])
        tokens = [
            SampledToken(
                segment.request_id,
                choice.token_id,
                segment.position + segment.length,
                choice.logprob,
                choice.top_logprobs,
                embedding,
            )
            for (segment, _), choice, embedding in zip(sampled, choices, embeddings, strict=True)
        ]
        # The tokens go first (round the ring, or to the first shard's driver): the caches are inputs of
        # the logits, so computed with them; evaluating them after the send changes no value, and keeps
        # that call off the ring's path. It still comes before anything reads them (prefixes, next step).
        if loaded.stage.stage.is_first:
            for token in tokens:
                self._first.on_token(loaded, token)
        else:
            computed = planned.upstream_compute_seconds + time.perf_counter() - started
            self._emit(SendToNext(SampledTokens(tuple(tokens), computed)))
        evaluate(cache_arrays(planned.states))

    @staticmethod
    def _embeddings(
        loaded: LoadedStage, hidden: mx.array, sampled_rows: list[int], samplers: list[RequestSampler]
    ) -> list[bytes]:
        """Per sampled row, the final norm's output as raw float32 where its request asked for it."""
        wanted = [index for index, sampler in enumerate(samplers) if sampler.options.return_embedding]
        embeddings = [b""] * len(samplers)
        if not wanted:
            return embeddings
        rows = mx.take(hidden, mx.array([sampled_rows[index] for index in wanted]), axis=1)
        normed = loaded.stage.final_hidden(rows).astype(mx.float32)  # (1, wanted, hidden)
        for position, index in enumerate(wanted):
            embeddings[index] = float32_bytes(normed[0, position])
        return embeddings

    # --- ending requests ---

    def _end_request(
        self, request_id: RequestId, ending: RequestEnding, message: str = "", *, stage: LoadedStage | None = None
    ) -> None:
        """The one way a request ends on this shard: its state here is freed, then who must hear of it does.

        - "released" (finished, cancelled, or released by the shard before): the next shard frees it too.
        - "failed here" / "failed upstream" (a failure found here, or one passed on by the shard before):
          the first shard tells its client and releases it on the rest of the ring; any other shard
          passes the failure on towards the first (one found here only while a stage is loaded).
        - "dropped with its stage" (`stage` is being replaced): the first shard tells its client and
          releases it on the rest of the ring; the service ignores requests it no longer serves.
        """
        loaded = stage if stage is not None else self._loaded
        if ending == "failed here":
            logger.warning("request %s failed: %s", request_id, message)
        if loaded is not None:
            loaded.requests.pop(request_id, None)
            self._first.forget(request_id)
            loaded.ready[:] = [row for row in loaded.ready if row.request_id != request_id]
            if request_id in loaded.prefill_waiting:
                loaded.prefill_waiting.remove(request_id)
        is_first = loaded is not None and loaded.stage.stage.is_first
        has_next = loaded is not None and not loaded.stage.stage.is_last
        if ending == "released":
            if has_next:
                self._emit(SendToNext(ReleaseRequest(request_id)))
            return
        if is_first or ending == "dropped with its stage":
            self._emit(RequestFailed(request_id, message))
            if is_first and has_next:
                self._emit(SendToNext(ReleaseRequest(request_id)))
            return
        if ending == "failed upstream" or loaded is not None:
            self._emit(SendToNext(FailRequest(request_id, message)))
