"""The Shard gRPC service: decode, hand to the stage worker, encode. No model work here.

Refusals are raised as `services.kernel.status_errors` errors; the server's status interceptor answers
them with their gRPC status.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc

from services.kernel.compute_dtype import ComputeDtype
from services.kernel.ids import InstanceId, ModelId, RequestId, ShardId
from services.kernel.status_errors import AlreadyExistsError, FailedPreconditionError, UnavailableError
from services.models.kv_footprint import kv_bytes_per_token_per_layer
from services.models.model_config import ModelConfig
from services.models.model_fetch import FetchedBytes
from services.models.model_store import ModelStore
from services.platform.fast_blas import blas_thread_control
from services.platform.request_context import bind_request_id, request_id_from_metadata
from shard_server.admission import AdmissionGate, AdmissionLimits, Ticket, kv_budget_tokens, with_sequence_cap
from shard_server.batch_plan import ring_waves_from_environment
from shard_server.blas_threads import BlasThreads, between_mlx_work, policy_from_environment
from shard_server.loop_handoff import LoopHandoff
from shard_server.metrics import ShardMetricsSnapshot
from shard_server.model_stage import StageRange
from shard_server.ring_checks import check_ring_message
from shard_server.ring_link import EncodedRingMessage, RingLink, RingTraffic, encode_ring_message
from shard_server.ring_messages import (
    CancelRequest,
    ClientEvent,
    Effect,
    FailRequest,
    LinkBroken,
    LoadStage,
    LocalEffect,
    RequestFailed,
    RequestFinished,
    SendToNext,
    StageLoadFailed,
    StageLoadSucceeded,
    TokenGenerated,
)
from shard_server.stage_worker import StageWorker
from shard_server.wire import (
    WireError,
    assign_reply_to_pb,
    check_assign_request,
    client_event_to_pb,
    ring_message_from_pb,
    ring_refusal_to_pb,
    start_request_from_pb,
    stats_to_pb,
)
from strata_wire import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)

CLIENT_EVENTS_LIMIT = 1024
"""Events buffered for one Generate call; a client that stops reading fails its request instead."""

STATS_WAIT_SECONDS = 2.0
"""How long GetStats waits for the worker's fresh counters before it answers with its last snapshot."""

StageOutcome = StageLoadSucceeded | StageLoadFailed


class ShardService(shard_pb2_grpc.ShardServicer):
    def __init__(
        self,
        shard_id: ShardId,
        address: str,
        store: ModelStore,
        fetch_stage: Callable[[ModelId, int, int], Awaitable[str | None]] | None = None,
        admission: AdmissionLimits | None = None,
        fetched: FetchedBytes | None = None,
        auto_compute_dtype: ComputeDtype = "float32",
    ) -> None:
        self._shard_id = shard_id
        self._auto_compute_dtype: ComputeDtype = auto_compute_dtype
        """What compute dtype "auto" means on this shard's device (float32 on the CPU, bfloat16 on GPUs)."""
        self._fetched = fetched
        """The model bytes `fetch_stage` received (from peers, from the Hub), reported in GetStats."""
        self._address = address
        self._store = store
        self._fetch_stage = fetch_stage
        """Makes the files of a stage present (from a peer's store); returns why not, or None."""
        self._loop = asyncio.get_running_loop()
        self._handoff = LoopHandoff(self._loop)
        control = blas_thread_control()
        self._worker = StageWorker(
            emit=self._emit_from_worker,
            blas_threads=BlasThreads(
                policy_from_environment(), between_mlx_work(control.set) if control is not None else None
            ),
            ring_waves=ring_waves_from_environment(),
        )
        self._clients: dict[RequestId, asyncio.Queue[ClientEvent]] = {}
        self._pending_loads: dict[InstanceId, asyncio.Future[StageOutcome]] = {}
        self._link: RingLink | None = None
        self._term = 0
        self._instance_id: InstanceId | None = None
        self._vocab_size = 0
        self._hidden_size = 0
        self._serves_first_stage = False
        self._assign_lock = asyncio.Lock()
        self._admission_overrides = admission or AdmissionLimits()
        """Operator limits; a KV budget set here replaces the coordinator's."""
        self._admission = AdmissionGate(self._admission_overrides)
        self.ring_traffic = RingTraffic()
        """What crossed this shard's ring links (every link it opens or accepts counts here)."""

    def start(self) -> None:
        self._worker.start()

    async def close_link(self) -> None:
        """Ends the stream to the next shard; it also wakes a worker waiting for room in the link."""
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def stop(self) -> None:
        await self.close_link()
        self._worker.stop()

    # --- effects from the worker thread, applied on the event loop ---

    def _emit_from_worker(self, effect: Effect) -> None:
        if not isinstance(effect, SendToNext):
            self._handoff.call(self._apply_effect, effect)
            return
        link = self._link
        if link is not None:
            # Backpressure: the worker waits while the next shard has not taken earlier messages.
            # After the stall limit the send goes ahead and breaks the link (bounded either way).
            link.wait_for_room()
        self._handoff.call(self._send_to_next, encode_ring_message(effect.message))

    def _send_to_next(self, encoded: EncodedRingMessage) -> None:
        if self._link is None:
            logger.error("no next shard to send %s to", encoded.kind)
            return
        self._link.send(encoded)

    def _apply_effect(self, effect: LocalEffect) -> None:
        match effect:
            case TokenGenerated() | RequestFinished() | RequestFailed():
                client = self._clients.get(effect.request_id)
                if client is not None and not client.full():
                    if client.qsize() == CLIENT_EVENTS_LIMIT:
                        effect = RequestFailed(effect.request_id, "the client stopped reading its tokens")
                        self._worker.submit(CancelRequest(effect.request_id))
                    client.put_nowait(effect)
            case StageLoadSucceeded() | StageLoadFailed():
                pending = self._pending_loads.pop(effect.instance_id, None)
                if pending is not None and not pending.done():
                    pending.set_result(effect)

    def _on_link_refused(self, request_id: RequestId, message: str) -> None:
        self._worker.submit(FailRequest(request_id, message))

    def _on_link_broken(self, message: str) -> None:
        self._worker.submit(LinkBroken(message))

    # --- RPCs ---

    async def Assign(
        self, request: shard_pb2.AssignRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> shard_pb2.AssignReply:
        asked_dtype = check_assign_request(request)
        compute_dtype = self._auto_compute_dtype if asked_dtype == "auto" else asked_dtype
        async with self._assign_lock:
            if request.term < self._term:
                raise FailedPreconditionError(f"term {request.term} is older than term {self._term} already seen")
            if self._fetch_stage is not None:
                problem = await self._fetch_stage(ModelId(request.model_id), request.start_layer, request.end_layer)
                if problem is not None:
                    raise FailedPreconditionError(problem)
            if not self._store.has_model(ModelId(request.model_id)):
                raise FailedPreconditionError(f"model {request.model_id!r} is not in this shard's store")
            self._term = request.term
            instance_id = InstanceId(request.instance_id)
            stage = StageRange(request.start_layer, request.end_layer, request.num_layers)
            model_dir = self._store.model_dir(ModelId(request.model_id))
            outcome = await self._load(
                instance_id, model_dir, stage, request.prefill_step_size, compute_dtype, request.ring_size
            )
            if isinstance(outcome, StageLoadFailed):
                raise FailedPreconditionError(outcome.message)
            self._instance_id = instance_id
            # The config the stage parsed: a shard may hold just the weight files of its own layers.
            self._vocab_size = outcome.config.vocab_size
            self._hidden_size = outcome.config.hidden_size
            self._serves_first_stage = stage.is_first
            limits = self._admission_limits(outcome.config, request.kv_budget_bytes_per_layer)
            self._admission.configure(with_sequence_cap(limits, request.kv_max_sequences))
            await self._relink(request.next_address, stage)
            return assign_reply_to_pb(outcome.weight_bytes)

    async def _load(
        self,
        instance_id: InstanceId,
        model_dir: Path,
        stage: StageRange,
        prefill_step_size: int,
        compute_dtype: ComputeDtype,
        ring_size: int,
    ) -> StageOutcome:
        outcome: asyncio.Future[StageOutcome] = self._loop.create_future()
        self._pending_loads[instance_id] = outcome
        self._worker.submit(LoadStage(instance_id, model_dir, stage, prefill_step_size, compute_dtype, ring_size))
        return await outcome

    def _admission_limits(self, config: ModelConfig, budget_bytes_per_layer: int) -> AdmissionLimits:
        overrides = self._admission_overrides
        if overrides.kv_budget_tokens is not None:
            return overrides
        per_token = kv_bytes_per_token_per_layer(config)
        return replace(overrides, kv_budget_tokens=kv_budget_tokens(budget_bytes_per_layer, per_token))

    async def _relink(self, next_address: str, stage: StageRange) -> None:
        if self._link is not None and self._link.address != next_address:
            await self._link.close()
            self._link = None
        if stage.is_first and stage.is_last:
            return  # a one-shard ring loops inside the worker
        if self._link is None:
            self._link = RingLink(next_address, self._on_link_refused, self._on_link_broken, traffic=self.ring_traffic)

    async def Generate(
        self, request: shard_pb2.GenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[shard_pb2.GenerateReply]:
        start = start_request_from_pb(request, self._vocab_size)
        request_id = start.request_id
        # This call's task is its own: the gateway's request id (else the call's) stays on its log lines.
        bind_request_id(request_id_from_metadata(context.invocation_metadata()) or request_id)
        if self._instance_id != request.instance_id:
            raise FailedPreconditionError(
                f"this shard serves instance {self._instance_id}, not {request.instance_id!r}"
            )
        if not self._serves_first_stage:
            raise FailedPreconditionError("requests start at the first shard of the instance, not here")
        if request_id in self._clients:
            raise AlreadyExistsError(f"request {request_id} is already running")
        events: asyncio.Queue[ClientEvent] = asyncio.Queue(CLIENT_EVENTS_LIMIT + 1)  # + room for the overflow
        self._clients[request_id] = events
        finished = False
        ticket: Ticket | None = None
        try:
            # Waits for KV room (bounded); a refusal is RESOURCE_EXHAUSTED with a retry hint.
            ticket = await self._admission.admit(request_id, len(start.prompt_tokens) + start.max_tokens)
            logger.info(
                "request %s: %d prompt tokens, at most %d new, %d replayed",
                request_id,
                len(start.prompt_tokens),
                start.max_tokens,
                len(start.replay_tokens),
            )
            self._worker.submit(start)
            while not finished:
                event = await events.get()
                if isinstance(event, RequestFailed):
                    finished = True
                    logger.info("request %s failed: %s", request_id, event.message)
                    raise UnavailableError(event.message)
                if isinstance(event, RequestFinished):
                    finished = True
                    logger.info(
                        "request %s finished (%s): %d tokens generated",
                        request_id,
                        event.reason,
                        event.generated_tokens,
                    )
                yield client_event_to_pb(event)
        finally:
            del self._clients[request_id]
            if ticket is not None:
                self._admission.release(ticket)
                if not finished:
                    logger.info("request %s cancelled by its client", request_id)
                    self._worker.submit(CancelRequest(request_id))

    async def Ring(
        self,
        request_iterator: AsyncIterator[shard_pb2.RingMessage],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[shard_pb2.RingReply]:
        instance_at_open = self._instance_id
        try:
            async for message in request_iterator:
                self.ring_traffic.received(message.ByteSize())
                try:
                    item = ring_message_from_pb(message)
                    check_ring_message(item, self._hidden_size)
                    self._worker.submit(item)
                except WireError as error:
                    logger.warning("refused ring message for %s: %s", message.request_id, error)
                    yield ring_refusal_to_pb(message.request_id, error)
        except asyncio.CancelledError:
            return  # the previous shard went away, or this server is stopping
        finally:
            # However the link ended: if it served the instance this shard still serves, the requests
            # in flight can no longer come back round: fail them now, so the gateway recovers at once
            # instead of waiting for a token that never comes.
            if instance_at_open is not None and instance_at_open == self._instance_id:
                logger.warning("the ring link from the previous shard of %s ended", instance_at_open)
                self._worker.submit(LinkBroken(f"the link from the previous shard of {instance_at_open} dropped"))

    def metrics_snapshot(self, wait_seconds: float = STATS_WAIT_SECONDS) -> ShardMetricsSnapshot:
        """Blocks (the metrics server's thread, never the event loop) for the worker's fresh counters.

        The admission gate and the ring counters belong to the event loop; reading their ints here is
        safe (each read is atomic) and at worst a step behind."""
        return ShardMetricsSnapshot(
            shard_id=self._shard_id,
            stage=self._worker.fresh_stats(wait_seconds),
            admission=self._admission.stats(),
            ring=replace(self.ring_traffic),
            fetched=replace(self._fetched) if self._fetched is not None else FetchedBytes(),
        )

    async def GetStats(
        self, request: shard_pb2.GetStatsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> shard_pb2.ShardStats:
        stats = await asyncio.to_thread(self._worker.fresh_stats, STATS_WAIT_SECONDS)
        return stats_to_pb(self._shard_id, stats, self._admission.stats(), self._fetched)
