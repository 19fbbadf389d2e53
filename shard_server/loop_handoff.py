"""Calls from the stage worker's thread onto the event loop, in order, with one wakeup per burst.

A decode step of R rows emits R tokens (and sends to the next shard) back to back. One
`call_soon_threadsafe` each writes to the loop's self-pipe and wakes it R times, all on the cores
the model computes on; here the calls queue under a lock and the first of a burst alone wakes the
loop, which then runs every queued call in the order they were handed over.
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import TypeVar

logger = logging.getLogger(__name__)

Argument = TypeVar("Argument")


class LoopHandoff:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[Callable[[], None]] = []

    def call(self, function: Callable[[Argument], None], argument: Argument) -> None:
        """Thread-safe: `function(argument)` runs on the loop after every call handed over before it."""
        with self._lock:
            self._pending.append(partial(function, argument))
            wake = len(self._pending) == 1
        if wake:
            self._loop.call_soon_threadsafe(self._run_pending)

    def _run_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for function in pending:
            try:
                function()
            except Exception:  # as the loop does for its own callbacks: one failure must not drop the rest
                logger.exception("a call handed to the event loop failed")
