"""Calls from another thread onto the event loop: in order, one wakeup per burst, failures contained."""

import asyncio
import threading

import pytest

from shard_server.loop_handoff import LoopHandoff

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


class _CountingLoop(asyncio.SelectorEventLoop):
    """Counts the cross-thread wakeups the handoff asks for."""

    wakeups = 0

    def call_soon_threadsafe(self, *arguments: object, **keywords: object) -> asyncio.Handle:  # type: ignore[override]
        self.wakeups += 1
        return super().call_soon_threadsafe(*arguments, **keywords)  # type: ignore[arg-type]


def test_a_burst_from_a_thread_runs_in_order_with_one_wakeup() -> None:
    loop = _CountingLoop()
    try:
        handoff = LoopHandoff(loop)
        seen: list[int] = []

        async def scenario() -> None:
            done = asyncio.Event()

            def burst() -> None:
                for value in range(100):
                    handoff.call(seen.append, value)
                handoff.call(lambda _: done.set(), None)

            thread = threading.Thread(target=burst)
            thread.start()
            thread.join()  # the whole burst is queued before the loop runs again
            await done.wait()

        loop.run_until_complete(scenario())
        assert seen == list(range(100))
        assert loop.wakeups == 1
    finally:
        loop.close()


def test_a_failing_call_is_logged_and_the_later_calls_still_run(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[str]:
        handoff = LoopHandoff(asyncio.get_running_loop())
        seen: list[str] = []
        done = asyncio.Event()

        def fail(message: str) -> None:
            raise ValueError(message)

        def hand_over() -> None:
            handoff.call(seen.append, "before")
            handoff.call(fail, "bad effect")
            handoff.call(seen.append, "after")
            handoff.call(lambda _: done.set(), None)

        await asyncio.to_thread(hand_over)
        await done.wait()
        return seen

    assert asyncio.run(scenario()) == ["before", "after"]
    assert "a call handed to the event loop failed" in caplog.text
    assert "bad effect" in caplog.text
