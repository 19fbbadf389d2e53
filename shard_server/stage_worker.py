"""The one thread that owns a shard's model: runs ring work in arrival order.

The gRPC service only decodes messages and submits them here; every forward pass, sample and cache
change happens on this thread, never on the event loop. What the worker wants done outside
(send to the next shard, report to the gateway) goes out through the `emit` callback.

Per request each shard keeps a KV cache; the first shard also drives the request (prompt chunks,
stop conditions) and the last shard keeps its sampler with the request's own random key.
"""

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from services.ids import InstanceId, RequestId
from services.mlx_typing import evaluate
from services.sampling import SamplingOptions
from services.tensor_codec import TensorDecodeError, decode, encode
from shard_server.model_stage import ModelLoadError, ModelStage
from shard_server.prefill import prefill_chunks
from shard_server.ring_messages import (
    CancelRequest,
    ContinuePrefill,
    Effect,
    ForwardStep,
    LinkBroken,
    LoadStage,
    ReleaseRequest,
    RequestFailed,
    RequestFailure,
    RequestFinished,
    SampledToken,
    SendToNext,
    StageLoaded,
    StageLoadFailed,
    StartRequest,
    TokenGenerated,
    WorkItem,
)
from shard_server.sampler import RequestSampler

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request cannot go on (bad position, unknown request, bad tensor)."""


@dataclass
class _Driver:
    """First shard only: what the request asked for and how far it got."""

    prompt_tokens: tuple[int, ...]
    max_tokens: int
    stop_token_ids: frozenset[int]
    chunks: list[tuple[int, int]]
    next_chunk: int = 0
    generated: int = 0


@dataclass
class _RequestState:
    cache: list[KVCache]
    sampling: SamplingOptions | None = None
    """Sent on with the request's first step so the last shard can sample."""
    sampler: RequestSampler | None = None
    driver: _Driver | None = None


@dataclass(frozen=True)
class StageStats:
    instance_id: InstanceId | None
    start_layer: int
    end_layer: int
    active_requests: int
    kv_cache_bytes: int
    steps: int


@dataclass
class _Loaded:
    instance_id: InstanceId
    stage: ModelStage
    prefill_step_size: int
    requests: dict[RequestId, _RequestState] = field(default_factory=lambda: {})


class StageWorker:
    def __init__(self, emit: Callable[[Effect], None]) -> None:
        self._emit = emit
        self._queue: queue.Queue[WorkItem | None] = queue.Queue()
        self._loaded: _Loaded | None = None
        self._steps = 0
        self._stats_lock = threading.Lock()
        self._stats = StageStats(None, 0, 0, 0, 0, 0)
        self._thread = threading.Thread(target=self._run, name="stage-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def submit(self, item: WorkItem) -> None:
        """Thread-safe; items run in submission order."""
        self._queue.put(item)

    def stats(self) -> StageStats:
        with self._stats_lock:
            return self._stats

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._handle(item)
            except Exception:  # the worker must outlive any single bad item
                logger.exception("stage worker failed on %s", type(item).__name__)
            self._refresh_stats()

    def _refresh_stats(self) -> None:
        loaded = self._loaded
        if loaded is None:
            snapshot = StageStats(None, 0, 0, 0, 0, self._steps)
        else:
            kv_bytes = sum(cache.nbytes for state in loaded.requests.values() for cache in state.cache)
            snapshot = StageStats(
                loaded.instance_id,
                loaded.stage.stage.start_layer,
                loaded.stage.stage.end_layer,
                len(loaded.requests),
                kv_bytes,
                self._steps,
            )
        with self._stats_lock:
            self._stats = snapshot

    def _handle(self, item: WorkItem) -> None:
        match item:
            case LoadStage():
                self._load(item)
            case StartRequest():
                self._guarded(item.request_id, lambda loaded: self._start(loaded, item))
            case ContinuePrefill():
                self._guarded(item.request_id, lambda loaded: self._run_next_chunk(loaded, item.request_id))
            case ForwardStep():
                self._guarded(item.request_id, lambda loaded: self._forward(loaded, item))
            case SampledToken():
                self._guarded(item.request_id, lambda loaded: self._on_token(loaded, item))
            case ReleaseRequest():
                self._release(item.request_id, pass_on=True)
            case CancelRequest():
                self._release(item.request_id, pass_on=True)
            case RequestFailure():
                self._on_failure(item)
            case LinkBroken():
                loaded = self._loaded
                for request_id in list(loaded.requests) if loaded is not None else []:
                    self._fail(request_id, item.message)

    def _guarded(self, request_id: RequestId, action: Callable[[_Loaded], None]) -> None:
        loaded = self._loaded
        if loaded is None:
            self._fail(request_id, "this shard has no model loaded")
            return
        try:
            action(loaded)
        except (RequestError, TensorDecodeError, ValueError) as error:
            self._fail(request_id, str(error))

    # --- loading ---

    def _load(self, item: LoadStage) -> None:
        previous = self._loaded
        self._loaded = None
        if previous is not None:
            for request_id in list(previous.requests):
                self._fail_locally(previous, request_id, "the model instance was re-placed")
        try:
            stage = ModelStage(item.model_dir, item.stage)
        except (ModelLoadError, OSError, ValueError) as error:
            self._emit(StageLoadFailed(item.instance_id, str(error)))
            return
        self._loaded = _Loaded(item.instance_id, stage, item.prefill_step_size)
        logger.info(
            "loaded layers [%d, %d) of %d for instance %s (%d bytes)",
            item.stage.start_layer,
            item.stage.end_layer,
            item.stage.num_layers,
            item.instance_id,
            stage.weight_bytes,
        )
        self._emit(StageLoaded(item.instance_id, stage.weight_bytes))

    # --- first shard: driving a request ---

    def _start(self, loaded: _Loaded, item: StartRequest) -> None:
        stage = loaded.stage
        if not stage.stage.is_first:
            raise RequestError("requests must start at the first shard of the instance")
        if item.request_id in loaded.requests:
            raise RequestError(f"request {item.request_id} is already running")
        driver = _Driver(
            prompt_tokens=item.prompt_tokens,
            max_tokens=item.max_tokens,
            stop_token_ids=item.stop_token_ids,
            chunks=prefill_chunks(len(item.prompt_tokens), loaded.prefill_step_size),
        )
        sampler = RequestSampler(item.sampling) if stage.stage.is_last else None
        loaded.requests[item.request_id] = _RequestState(stage.make_cache(), item.sampling, sampler, driver)
        self._run_next_chunk(loaded, item.request_id)

    def _run_next_chunk(self, loaded: _Loaded, request_id: RequestId) -> None:
        state = loaded.requests.get(request_id)
        if state is None or state.driver is None:
            return  # cancelled meanwhile
        driver = state.driver
        start, end = driver.chunks[driver.next_chunk]
        driver.next_chunk += 1
        sample = driver.next_chunk == len(driver.chunks)
        tokens = mx.array(driver.prompt_tokens[start:end], dtype=mx.int32)[None]  # (1, positions)
        self._run_stage(loaded, request_id, state, tokens, start, sample)
        if not sample:
            self.submit(ContinuePrefill(request_id))

    def _on_token(self, loaded: _Loaded, item: SampledToken) -> None:
        state = loaded.requests.get(item.request_id)
        if state is None or state.driver is None:
            return  # the request ended while the token travelled
        driver = state.driver
        driver.generated += 1
        self._emit(TokenGenerated(item.request_id, item.token_id, driver.generated - 1))
        reason = None
        if item.token_id in driver.stop_token_ids:
            reason = "stop"
        elif driver.generated >= driver.max_tokens:
            reason = "length"
        if reason is not None:
            self._emit(RequestFinished(item.request_id, reason, len(driver.prompt_tokens), driver.generated))
            self._release(item.request_id, pass_on=True)
            return
        tokens = mx.array([item.token_id], dtype=mx.int32)[None]  # (1, 1)
        self._run_stage(loaded, item.request_id, state, tokens, item.position, sample=True)

    # --- every shard: one step through this stage ---

    def _forward(self, loaded: _Loaded, item: ForwardStep) -> None:
        stage = loaded.stage
        if stage.stage.is_first:
            raise RequestError("the first shard does not take hidden states")
        state = loaded.requests.get(item.request_id)
        if state is None:
            if item.position != 0:
                raise RequestError(f"unknown request {item.request_id} at position {item.position}")
            state = _RequestState(stage.make_cache())
            loaded.requests[item.request_id] = state
        if item.sampling is not None:
            state.sampling = item.sampling
            if stage.stage.is_last and state.sampler is None:
                state.sampler = RequestSampler(item.sampling)
        hidden = decode(item.hidden, max_elements=loaded.prefill_step_size * 65536)
        if hidden.ndim != 3 or hidden.shape[0] != 1:
            raise RequestError(f"hidden states must have shape (1, positions, hidden); got {hidden.shape}")
        self._run_stage(loaded, item.request_id, state, hidden, item.position, item.sample)

    def _run_stage(
        self,
        loaded: _Loaded,
        request_id: RequestId,
        state: _RequestState,
        inputs: mx.array,
        position: int,
        sample: bool,
    ) -> None:
        if state.cache[0].offset != position:
            raise RequestError(f"request {request_id} is at position {state.cache[0].offset}, step says {position}")
        stage = loaded.stage
        output = stage.forward(inputs, state.cache)
        self._steps += 1
        next_position = position + inputs.shape[1]
        if not stage.stage.is_last:
            sampling = state.sampling if position == 0 else None
            self._emit(SendToNext(ForwardStep(request_id, position, sample, encode(output), sampling)))
            return
        if not sample:
            evaluate([cache.state for cache in state.cache])
            return
        if state.sampler is None:
            raise RequestError(f"request {request_id} reached the last shard without sampling options")
        token = SampledToken(request_id, state.sampler.sample(output), next_position)
        if stage.stage.is_first:
            self.submit(token)  # queued, so other requests interleave with this one
        else:
            self._emit(SendToNext(token))

    # --- ending requests ---

    def _release(self, request_id: RequestId, pass_on: bool) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        loaded.requests.pop(request_id, None)
        stage = loaded.stage.stage
        if pass_on and not stage.is_last:
            self._emit(SendToNext(ReleaseRequest(request_id)))

    def _on_failure(self, item: RequestFailure) -> None:
        loaded = self._loaded
        if loaded is not None and loaded.stage.stage.is_first:
            self._fail_locally(loaded, item.request_id, item.message)
            return
        self._release(item.request_id, pass_on=False)
        self._emit(SendToNext(item))

    def _fail(self, request_id: RequestId, message: str) -> None:
        logger.warning("request %s failed: %s", request_id, message)
        loaded = self._loaded
        if loaded is not None and loaded.stage.stage.is_first:
            self._fail_locally(loaded, request_id, message)
            return
        self._release(request_id, pass_on=False)
        if loaded is not None:
            self._emit(SendToNext(RequestFailure(request_id, message)))

    def _fail_locally(self, loaded: _Loaded, request_id: RequestId, message: str) -> None:
        """First shard: tell the client, then free the request on every shard."""
        loaded.requests.pop(request_id, None)
        self._emit(RequestFailed(request_id, message))  # the service ignores requests it no longer serves
        if loaded.stage.stage.is_first and not loaded.stage.stage.is_last:
            self._emit(SendToNext(ReleaseRequest(request_id)))
