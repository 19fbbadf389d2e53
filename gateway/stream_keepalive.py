"""Comment lines that keep a quiet Server-Sent Events stream alive.

While a stream has nothing to send (a long prefill, a recovery pause, a slow first token), proxies
and load balancers may close the idle connection. `with_keepalive` sends `: keep-alive` (an SSE
comment, ignored by every client) after each `interval_seconds` without an event.
"""

import asyncio
from collections.abc import AsyncGenerator

KEEPALIVE_COMMENT = ": keep-alive\n\n"
KEEPALIVE_INTERVAL_SECONDS = 15.0


async def with_keepalive(
    stream: AsyncGenerator[str], interval_seconds: float = KEEPALIVE_INTERVAL_SECONDS
) -> AsyncGenerator[str]:
    """`stream`'s items, with a keep-alive comment after each quiet interval; closing it closes `stream`."""
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait((pending,), timeout=interval_seconds)
            if not done:
                yield KEEPALIVE_COMMENT
                continue
            next_item, pending = pending, None
            try:
                item = next_item.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # the stream's own cleanup runs inside its cancelled step
            await asyncio.wait((pending,))
        await stream.aclose()
