"""The gRPC floor under the per-hop overhead: one ring message to another process and back.

`python -m services.app.benchmark.transport_floor PORT` serves an echo of Shard.Ring on 127.0.0.1 (a
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

from services.app.benchmark.ring_floor import (
    RING_STEP_SECONDS,
    compute_for,
    measure_ring_hop,
    start_ring_server,
    step_message,
)
from services.app.ports import free_port
from strata_wire import shard_pb2, shard_pb2_grpc

ROUND_TRIPS = 200
ROUND_TRIPS_AFTER_COMPUTE = 60
COMPUTE_BURST_SECONDS = 0.05
READY_SECONDS = 30.0
COMPUTE_MATRIX_SIZE = 512


@dataclass(frozen=True)
class TransportFloor:
    """Median one-way times, in seconds."""

    back_to_back: float
    after_compute: float
    compute_burst_seconds: float
    ring_hop: float
    """Model thread to model thread in a two-process ring with no model (`ring_floor`)."""
    ring_step_seconds: float


async def _one_way_times(port: int, message: shard_pb2.RingMessage) -> tuple[list[float], list[float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        ring = shard_pb2_grpc.ShardStub(channel).Ring
        call = ring()
        times: tuple[list[float], list[float]] = ([], [])
        for index in range(ROUND_TRIPS + ROUND_TRIPS_AFTER_COMPUTE):
            after_compute = index >= ROUND_TRIPS
            if after_compute:
                await asyncio.to_thread(compute_for, COMPUTE_BURST_SECONDS, COMPUTE_MATRIX_SIZE)
            started = time.perf_counter()
            await call.write(message)
            await call.read()
            times[after_compute].append((time.perf_counter() - started) / 2)
        await call.done_writing()
        return times


def measure_transport_floor(hidden_size: int) -> TransportFloor:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "services.app.benchmark.transport_floor", str(port)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=READY_SECONDS)
        back_to_back, after_compute = asyncio.run(_one_way_times(port, step_message(hidden_size)))
    finally:
        server.terminate()
        server.wait(timeout=10)
    # The first exchanges open the stream and warm both sides up.
    return TransportFloor(
        statistics.median(back_to_back[20:]),
        statistics.median(after_compute[5:]),
        COMPUTE_BURST_SECONDS,
        measure_ring_hop(hidden_size),
        RING_STEP_SECONDS,
    )


async def _serve(port: int) -> None:
    async def echo(
        messages: AsyncIterator[shard_pb2.RingMessage], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[shard_pb2.RingReply]:
        async for message in messages:
            yield shard_pb2.RingReply(request_id=message.request_id)

    server = await start_ring_server(port, echo)
    await server.wait_for_termination()  # until the benchmark terminates this process


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m services.app.benchmark.transport_floor PORT", file=sys.stderr)
        return 2
    asyncio.run(_serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
