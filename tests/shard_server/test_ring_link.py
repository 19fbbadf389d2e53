"""The ring link's bounded queue against a real in-process gRPC server whose Ring handler stops reading:
the sender waits for room, then breaks the link instead of growing; a reading server drains it."""

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import pytest

from services.kernel.ids import RequestId
from services.platform.tensor_codec import EncodedTensor
from shard_server.ring_link import RingLink, encode_ring_message
from shard_server.ring_messages import BatchStep, Segment
from strata_wire import shard_pb2

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

MAX_MESSAGES = 4
ROWS, HIDDEN = 256, 1024  # 1 MiB a message: gRPC's own buffers (flow-control windows) fill after a few
MOST_IN_FLIGHT = 100


class _RingOnly:
    """Serves only Shard.Ring (a generic handler: the generated servicer base is abstract)."""

    def __init__(self, reading: bool) -> None:
        self.reading = reading
        self.received = 0
        self.stop = asyncio.Event()

    async def Ring(
        self,
        request_iterator: AsyncIterator[shard_pb2.RingMessage],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[shard_pb2.RingReply]:
        if not self.reading:
            await self.stop.wait()  # a shard that no longer reads its stream
            return
        async for _ in request_iterator:
            self.received += 1
        for reply in ():  # an async generator that never replies
            yield reply


def _step(index: int) -> BatchStep:
    segment = Segment(RequestId(f"r{index}"), 0, ROWS, False, None)
    return BatchStep((segment,), EncodedTensor("float32", (1, ROWS, HIDDEN), bytes(4 * ROWS * HIDDEN)))


async def _serve(servicer: _RingOnly) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.Ring,
        request_deserializer=shard_pb2.RingMessage.FromString,
        response_serializer=shard_pb2.RingReply.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("strata.v1.Shard", {"Ring": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_a_next_shard_that_stops_reading_makes_the_sender_wait_then_break_the_link() -> None:
    async def scenario() -> None:
        servicer = _RingOnly(reading=False)
        server, address = await _serve(servicer)
        broken: list[str] = []
        link = RingLink(address, lambda request_id, message: None, broken.append, max_messages=MAX_MESSAGES)
        try:
            sent = 0
            while await asyncio.to_thread(link.wait_for_room, 0.5):  # as the worker thread does
                link.send(encode_ring_message(_step(sent)))
                sent += 1
                assert sent <= MOST_IN_FLIGHT, "the queue never filled"
            assert broken == []
            link.send(encode_ring_message(_step(sent)))  # the stall limit passed: the send breaks the link
            assert len(broken) == 1
            assert "stopped reading" in broken[0]
            assert await asyncio.to_thread(link.wait_for_room, 0.5)  # the dropped messages freed the room
        finally:
            servicer.stop.set()
            await link.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_a_reading_next_shard_receives_everything_in_order_through_the_bounded_queue() -> None:
    async def scenario() -> None:
        servicer = _RingOnly(reading=True)
        server, address = await _serve(servicer)
        broken: list[str] = []
        link = RingLink(address, lambda request_id, message: None, broken.append, max_messages=MAX_MESSAGES)
        done = threading.Event()
        try:
            for index in range(20):
                assert await asyncio.to_thread(link.wait_for_room, 5.0)
                link.send(encode_ring_message(_step(index)))
            for _ in range(100):
                if servicer.received == 20:
                    done.set()
                    break
                await asyncio.sleep(0.05)
            assert done.is_set(), servicer.received
            assert broken == []
        finally:
            await link.close()
            await server.stop(None)

    asyncio.run(scenario())
