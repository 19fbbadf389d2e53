"""A ring hop with no model in it: the floor under strata's per-hop overhead on this machine.

Two processes play a two-shard ring at batch 1, built as a shard is: an asyncio gRPC server and a
Ring stream to the peer on the event loop, and a model thread that holds each message. A model
thread takes a message, computes for a ring step (matrix products), stamps the clock and hands the
next message to its event loop, which sends it. The other side's event loop receives it and hands it
to its model thread, which notes how long it took. So each one-way time crosses what a strata hop
crosses (model thread -> event loop -> gRPC -> event loop -> model thread, each side idle or busy
for a step in between), without strata's own work: no encoding of activations, no batch planning,
no cache lookups. What strata's per-hop overhead adds above this figure is strata's.

`python -m services.app.benchmark.ring_floor PORT PEER_PORT STARTS ROUNDS STEP_SECONDS READY_SECONDS HIDDEN_SIZE`
runs one side and prints its one-way times (JSON) when done. The clock is `time.perf_counter`,
the system's monotonic clock on Linux and macOS, the same for both processes.
"""

import asyncio
import contextlib
import json
import os
import queue
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np

from services.app.ports import free_port
from strata_wire import common_pb2, shard_pb2, shard_pb2_grpc

RING_ROUNDS = 80
RING_STEP_SECONDS = 0.03
"""About one stage's compute per step for the embedded model over two shards here."""
WARM_UP_ROUNDS = 5
READY_SECONDS = 30.0
START_SECONDS = 30.0
"""Allowed for starting the two processes (imports, servers), beyond the run itself."""
SERVICE = shard_pb2.DESCRIPTOR.services_by_name["Shard"].full_name
RING_MATRIX_SIZE = 256


class RingFloorError(Exception):
    """A side of the ring failed or did not finish in time."""


def compute_for(seconds: float, size: int) -> None:
    """Matrix products of `size` x `size` for `seconds`: a burst of compute, as a shard's step."""
    matrix = np.ones((size, size), dtype=np.float32)
    product = np.empty_like(matrix)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        np.matmul(matrix, matrix, out=product)


def step_message(hidden_size: int, stamp: float = 0.0) -> shard_pb2.RingMessage:
    """The one-row batch step a hop carries at batch 1; `compute_seconds` carries the sender's clock
    (these messages never reach a shard)."""
    segment = shard_pb2.StepSegment(request_id="hop-floor", position=0, length=1, sample=True)
    hidden = common_pb2.Tensor(dtype="float32", shape=[1, 1, hidden_size], data=bytes(4 * hidden_size))
    return shard_pb2.RingMessage(batch=shard_pb2.BatchStep(segments=[segment], hidden=hidden, compute_seconds=stamp))


async def start_ring_server(
    port: int,
    ring: Callable[
        [AsyncIterator[shard_pb2.RingMessage], grpc.aio.ServicerContext[object, object]],
        AsyncIterator[shard_pb2.RingReply],
    ],
) -> grpc.aio.Server:
    """A started server on 127.0.0.1:`port` whose only method is Shard.Ring, served by `ring`."""
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        ring,
        request_deserializer=shard_pb2.RingMessage.FromString,
        response_serializer=shard_pb2.RingReply.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Ring": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


def _model_thread(
    inbox: "queue.Queue[float]",
    send: Callable[[float], None],
    starts: bool,
    rounds: int,
    step_seconds: float,
    ready_seconds: float,
) -> list[float]:
    """Takes `rounds` messages, computing a step after each (and before the first, if it starts)."""
    one_way: list[float] = []
    if starts:
        compute_for(step_seconds, RING_MATRIX_SIZE)
        send(time.perf_counter())
    for _ in range(rounds):
        stamp = inbox.get(timeout=ready_seconds)
        one_way.append(time.perf_counter() - stamp)
        compute_for(step_seconds, RING_MATRIX_SIZE)
        send(time.perf_counter())
    return one_way


async def run_side(
    port: int, peer_port: int, starts: bool, rounds: int, step_seconds: float, ready_seconds: float, hidden_size: int
) -> list[float]:
    """One side of the ring: serves Ring on 127.0.0.1:`port`, streams to `peer_port`."""
    loop = asyncio.get_running_loop()
    inbox: queue.Queue[float] = queue.Queue()

    async def take(
        messages: AsyncIterator[shard_pb2.RingMessage], context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[shard_pb2.RingReply]:
        async for message in messages:
            inbox.put(message.batch.compute_seconds)
        for reply in ():  # a Ring stream answers only refusals: none here
            yield reply

    server = await start_ring_server(port, take)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{peer_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), ready_seconds)
            ring = shard_pb2_grpc.ShardStub(channel).Ring
            outbox: asyncio.Queue[shard_pb2.RingMessage | None] = asyncio.Queue()

            async def outgoing() -> AsyncIterator[shard_pb2.RingMessage]:
                while (message := await outbox.get()) is not None:
                    yield message

            call = ring(outgoing())

            def send(stamp: float) -> None:
                # Built on the model thread, as a shard encodes what it sends; the loop only queues it.
                loop.call_soon_threadsafe(outbox.put_nowait, step_message(hidden_size, stamp))

            one_way = await asyncio.to_thread(_model_thread, inbox, send, starts, rounds, step_seconds, ready_seconds)
            outbox.put_nowait(None)
            # The peer's side ends once it has taken every message; it may already be gone.
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await asyncio.wait_for(_drain(call), ready_seconds)
            return one_way
    finally:
        await server.stop(grace=None)


async def _drain(call: grpc.aio.StreamStreamCall[shard_pb2.RingMessage, shard_pb2.RingReply]) -> None:
    async for _ in call:
        pass


def measure_ring_hop(
    hidden_size: int,
    rounds: int = RING_ROUNDS,
    step_seconds: float = RING_STEP_SECONDS,
    ready_seconds: float = READY_SECONDS,
    *,
    allowed_seconds: float | None = None,
) -> float:
    """Median one-way time of a hop with no model, in seconds (warm-up rounds left out).

    `allowed_seconds`: how long both sides may take in all (default: their start, both ready waits
    and every round's compute); past it they are killed and RingFloorError is raised."""
    ports = (free_port(), free_port())
    # BLAS threads as a shard computing a lone request has them under `strata run`: every core, and
    # helpers that stop spinning at once (their spinning keeps cores awake and shortens wake-ups).
    environment = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": str(len(os.sched_getaffinity(0))),
        "OPENBLAS_THREAD_TIMEOUT": "8",
    }
    sides = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.app.benchmark.ring_floor",
                str(ports[index]),
                str(ports[1 - index]),
                str(int(index == 0)),
                str(rounds),
                str(step_seconds),
                str(ready_seconds),
                str(hidden_size),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for index in (0, 1)
    ]
    if allowed_seconds is None:
        allowed_seconds = START_SECONDS + 2 * ready_seconds + rounds * 2 * step_seconds
    deadline = time.monotonic() + allowed_seconds
    one_way: list[float] = []
    try:
        for side in sides:
            try:
                output, errors = side.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as expired:
                raise RingFloorError(f"a side of the ring did not finish within {allowed_seconds:.1f} s") from expired
            if side.returncode != 0:
                raise RingFloorError(f"a side of the ring failed: {errors.strip()[-500:]}")
            one_way.extend(float(value) for value in json.loads(output)[WARM_UP_ROUNDS:])
    finally:
        for side in sides:
            if side.poll() is None:
                side.kill()
                side.wait(timeout=10)
    if not one_way:
        raise RingFloorError(f"no hop measured in {rounds} rounds")
    return statistics.median(one_way)


def main() -> int:
    if len(sys.argv) != 8:
        print(
            "usage: python -m services.app.benchmark.ring_floor PORT PEER_PORT STARTS ROUNDS STEP_SECONDS "
            "READY_SECONDS HIDDEN_SIZE",
            file=sys.stderr,
        )
        return 2
    port, peer_port, starts, rounds = (int(value) for value in sys.argv[1:5])
    step_seconds, ready_seconds = float(sys.argv[5]), float(sys.argv[6])
    hidden_size = int(sys.argv[7])
    try:
        one_way = asyncio.run(run_side(port, peer_port, bool(starts), rounds, step_seconds, ready_seconds, hidden_size))
    except (queue.Empty, TimeoutError) as error:
        print(f"ring side on port {port}: no message from the peer in time ({type(error).__name__})", file=sys.stderr)
        return 1
    print(json.dumps(one_way))
    return 0


if __name__ == "__main__":
    sys.exit(main())
