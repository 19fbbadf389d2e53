"""The gRPC floor under the per-hop overhead: one ring message to another process and back.

`python -m services.benchmark.transport_floor PORT` serves an echo of Shard.Ring on 127.0.0.1 (a
reply for every message). The benchmark sends it a one-row batch step, as a ring hop at batch 1
carries, and halves the round trip: once back to back, and once after the sender sat through a burst
of matrix products while the receiver waited idle. Both read low for a ring: the echo's return leg
starts warm. The figure a ring hop meets is `ring_floor`'s, measured with them: model thread to model
thread, both sides idle or busy for a step between messages, as in a ring at batch 1.
"""

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np

from services.benchmark.ring_floor import RING_STEP_SECONDS, measure_ring_hop
from services.ports import free_port
from strata_wire import common_pb2, shard_pb2

ROUND_TRIPS = 200
ROUND_TRIPS_AFTER_COMPUTE = 60
COMPUTE_BURST_SECONDS = 0.05
READY_SECONDS = 30.0
METHOD = "/strata.v1.Shard/Ring"


@dataclass(frozen=True)
class TransportFloor:
    """Median one-way times, in seconds."""

    back_to_back: float
    after_compute: float
    compute_burst_seconds: float
    ring_hop: float
    """Model thread to model thread in a two-process ring with no model (`ring_floor`)."""
    ring_step_seconds: float


def _step_message(hidden_size: int) -> shard_pb2.RingMessage:
    segment = shard_pb2.StepSegment(request_id="transport-floor", position=0, length=1, sample=True)
    hidden = common_pb2.Tensor(dtype="float32", shape=[1, 1, hidden_size], data=bytes(4 * hidden_size))
    return shard_pb2.RingMessage(batch=shard_pb2.BatchStep(segments=[segment], hidden=hidden))


def _compute_burst(seconds: float) -> None:
    matrix = np.ones((512, 512), dtype=np.float32)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        matrix = (matrix @ matrix) / 512.0


async def _one_way_times(port: int, message: shard_pb2.RingMessage) -> tuple[list[float], list[float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ring = channel.stream_stream(
            METHOD,
            request_serializer=shard_pb2.RingMessage.SerializeToString,
            response_deserializer=shard_pb2.RingReply.FromString,
        )
        call = ring()
        times: tuple[list[float], list[float]] = ([], [])
        for index in range(ROUND_TRIPS + ROUND_TRIPS_AFTER_COMPUTE):
            after_compute = index >= ROUND_TRIPS
            if after_compute:
                await asyncio.to_thread(_compute_burst, COMPUTE_BURST_SECONDS)
            started = time.perf_counter()
            await call.write(message)
            await call.read()
            times[after_compute].append((time.perf_counter() - started) / 2)
        await call.done_writing()
        return times


def measure_transport_floor(hidden_size: int) -> TransportFloor:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "services.benchmark.transport_floor", str(port)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=READY_SECONDS)
        back_to_back, after_compute = asyncio.run(_one_way_times(port, _step_message(hidden_size)))
    finally:
        server.terminate()
        server.wait(timeout=10)
    # The first exchanges open the stream and warm both sides up.
    return TransportFloor(
        statistics.median(back_to_back[20:]),
        statistics.median(after_compute[5:]),
        COMPUTE_BURST_SECONDS,
        measure_ring_hop(),
        RING_STEP_SECONDS,
    )


async def _serve(port: int) -> None:
    async def echo(
        messages: AsyncIterator[shard_pb2.RingMessage], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[shard_pb2.RingReply]:
        async for message in messages:
            yield shard_pb2.RingReply(request_id=message.request_id)

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        echo,
        request_deserializer=shard_pb2.RingMessage.FromString,
        response_serializer=shard_pb2.RingReply.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("strata.v1.Shard", {"Ring": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()  # until the benchmark terminates this process


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m services.benchmark.transport_floor PORT", file=sys.stderr)
        return 2
    asyncio.run(_serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
