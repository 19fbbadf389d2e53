"""The benchmark's load client against a real HTTP server on loopback that drops connections unanswered."""

import asyncio

import httpx
import pytest

from services.app.benchmark.load_client import run_load

pytestmark = pytest.mark.unit

_STREAM = (
    b'data: {"choices": [{"text": "a"}]}\n\n'
    b'data: {"choices": [{"text": "b"}], "usage": {"completion_tokens": 2}}\n\n'
    b"data: [DONE]\n\n"
)


async def _load_against(connections_to_drop: int) -> tuple[int, list[str]]:
    """Runs one request against a server dropping its first connections; returns tokens and what it saw."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        if len(seen) < connections_to_drop:
            seen.append("dropped")
        else:
            seen.append("answered")
            header = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
            writer.write(header + b"content-length: %d\r\n\r\n" % len(_STREAM) + _STREAM)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await asyncio.wait_for(run_load(f"http://127.0.0.1:{port}", "model", 1, 1, 8), timeout=20)
        return result.timings[0].output_tokens, seen
    finally:
        server.close()
        await server.wait_closed()


def test_a_connection_closed_unanswered_is_retried_once_on_a_new_one() -> None:
    tokens, seen = asyncio.run(_load_against(connections_to_drop=1))
    assert tokens == 2
    assert seen == ["dropped", "answered"]


def test_a_server_that_keeps_dropping_fails_the_run() -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(_load_against(connections_to_drop=2))
