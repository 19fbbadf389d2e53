"""OpenAI's `n` and `logprobs` over the one generation path: several choices of one request, each
its own generation, and the logprobs attached to the replies.

Choice i of `n` is the request run again with request id `<id>-c<i>` and seed `seed + i` (the seed
the client gave, or the one the gateway picked), all started at once so the first shard batches
their rows together; each is replayed on its own after a failover like any request. A greedy
request gives n equal choices. Usage counts the prompt once and the completion tokens of every
choice. Streams interleave the choices' chunks, each naming its `index`; an error in any choice
ends the whole reply (the others are cancelled).
"""

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Sequence
from contextlib import aclosing
from typing import TypeVar

from gateway.collected_output import CollectedOutput, collect_output
from gateway.completion_engine import CompletionEngine
from gateway.generation_request import MAX_SEED, TextEvent, TextFinished, TextGenerationRequest
from gateway.openai_logprobs import chat_logprobs, completion_logprobs
from gateway.openai_schemas import ChatCompletion, ChatCompletionChunk, Completion
from gateway.token_logprobs import TokenLogprob
from services.kernel.ids import RequestId

_Result = TypeVar("_Result")


def choice_requests(generation: TextGenerationRequest, choices: int) -> list[TextGenerationRequest]:
    """The generation of each choice: itself for one choice, else seeded seed + i under ids `<id>-c<i>`."""
    if choices == 1:
        return [generation]
    seed = generation.sampling.seed
    return [
        generation.model_copy(
            update={
                "request_id": RequestId(f"{generation.request_id}-c{index}"),
                "sampling": generation.sampling.model_copy(update={"seed": (seed + index) % (MAX_SEED + 1)}),
            }
        )
        for index in range(choices)
    ]


def total_usage(finishes: Sequence[TextFinished]) -> TextFinished:
    """The prompt once, the completion tokens of every choice."""
    first = finishes[0]
    completion = sum(finished.completion_tokens for finished in finishes)
    return first.model_copy(update={"completion_tokens": completion})


async def all_of(work: Sequence[Awaitable[_Result]]) -> list[_Result]:
    """Every result in order; the first failure is raised after the rest are cancelled."""
    tasks = [asyncio.ensure_future(item) for item in work]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def whole_choices(
    engine: CompletionEngine, generations: Sequence[TextGenerationRequest]
) -> list[CollectedOutput]:
    return await all_of([collect_output(engine.run(generation)) for generation in generations])


async def interleaved(streams: Sequence[AsyncGenerator[TextEvent]]) -> AsyncGenerator[tuple[int, TextEvent]]:
    """(choice index, event) of every stream as they come; closing it closes them all."""
    queue: asyncio.Queue[tuple[int, TextEvent | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[TextEvent]) -> None:
        try:
            async with aclosing(stream):
                async for event in stream:
                    await queue.put((index, event))
            await queue.put((index, None))
        except Exception as error:  # handed to the reader, which raises it
            await queue.put((index, error))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def started_choices(
    engine: CompletionEngine, generations: Sequence[TextGenerationRequest]
) -> list[AsyncGenerator[TextEvent]]:
    """Starts every choice at once (`CompletionEngine.start`: each has its first event); if one fails
    or this is cancelled, the ones already started are closed (cancelled on the shards)."""
    tasks = [asyncio.ensure_future(engine.start(generation)) for generation in generations]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is None:
                await task.result().aclose()
        raise


_Reply = TypeVar("_Reply", bound=ChatCompletion | ChatCompletionChunk | Completion)
_Whole = TypeVar("_Whole", bound=ChatCompletion | Completion)


def indexed_reply(reply: _Reply, index: int, logprobs: Sequence[TokenLogprob] | None, text_start: int = 0) -> _Reply:
    """`reply`'s choices as choice `index`, with the logprobs of their tokens when the request asked
    (`text_start`: where those tokens' text starts in the choice, for completions' `text_offset`)."""
    update: dict[str, object] = {"index": index}
    if logprobs is not None:
        update["logprobs"] = (
            completion_logprobs(logprobs, text_start) if isinstance(reply, Completion) else chat_logprobs(logprobs)
        )
    return reply.model_copy(update={"choices": tuple(choice.model_copy(update=update) for choice in reply.choices)})


def combined_reply(replies: Sequence[_Whole], usage_of: _Whole) -> _Whole:
    """One reply holding every choice of `replies`, in order, with `usage_of`'s usage."""
    choices = tuple(choice for reply in replies for choice in reply.choices)
    return usage_of.model_copy(update={"choices": choices})
