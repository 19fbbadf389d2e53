"""The one generation path: a `TextGenerationRequest` in, text events out.

`CompletionEngine.run` tokenizes the prompt (in a worker thread), checks it against the model's
context window, streams token ids from the `TokenSource`, detokenizes them incrementally, cuts the
text at the first stop string and ends with one `TextFinished` carrying the usage. Every API dialect
goes through here; none of them sees token ids.

Errors, raised before the first event unless noted:
- `ModelNotFoundError`: the `TokenizerProvider` does not know the model.
- `InvalidRequestError`: empty or too long prompt, `max_tokens` beyond the context window, a chat
  template that is missing or rejects the conversation, an output grammar (JSON schema) llguidance refuses.
- `ModelUnavailableError`: from the token source, when no instance is ready.
- `PipelineError`: from the token source, also mid-stream; or when its stream ends without a finish.

Closing the returned generator early (client gone, stop string matched) closes the token source's
iterator, which cancels the request on the shards. The engine also closes that iterator after it
has read `GenerationFinished`; a token source must treat that as the end, not as a cancellation.

With `GatewayMetrics`, every run counts as in flight while it runs, reports each token's time and,
when it finishes, its usage (so the token counters move by exactly what the client is told).
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, suppress
from typing import Protocol

from gateway.assistant_output import PLAIN_SYNTAX, OutputEvents, OutputSyntax, output_syntax
from gateway.forced_tool_calls import forced_call_grammar
from gateway.generation_request import (
    ChatPrompt,
    InvalidRequestError,
    TextEvent,
    TextFinished,
    TextGenerationRequest,
    TextPrompt,
    TextStarted,
    with_generation_defaults,
)
from gateway.metrics import GatewayMetrics, GenerationTimer
from gateway.output_grammar import OutputGrammar, OutputGrammarError, compile_output_grammar
from gateway.token_logprobs import TokenLogprob, token_logprob
from gateway.token_source import GeneratedToken, GenerationFinished, PipelineError, TokenRequest, TokenSource
from gateway.tokenization import ChatTemplateError, ModelTokenizer, StopStringMatcher, ToolsNotSupportedError
from gateway.tool_call_parsing import tool_call_format
from gateway.tool_definitions import check_tool_choice
from services.kernel.ids import ModelId, RequestId
from services.kernel.sampling import SamplingOptions


class TokenizerProvider(Protocol):
    def tokenizer_for(self, model_id: ModelId) -> ModelTokenizer:
        """The tokenizer of a served model; raises `ModelNotFoundError` for any other id.

        May block (loading files the first time): the engine calls it from a worker thread.
        """
        ...


class CompletionEngine:
    def __init__(
        self, token_source: TokenSource, tokenizers: TokenizerProvider, metrics: GatewayMetrics | None = None
    ) -> None:
        self._token_source = token_source
        self._tokenizers = tokenizers
        self._metrics = metrics if metrics is not None else GatewayMetrics()

    @property
    def token_source(self) -> TokenSource:
        return self._token_source

    @property
    def tokenizers(self) -> TokenizerProvider:
        return self._tokenizers

    async def run(self, request: TextGenerationRequest, *, announce_start: bool = False) -> AsyncGenerator[TextEvent]:
        """Yields the generated text as `TextDelta`s, then exactly one `TextFinished`.

        With `announce_start`, a `TextStarted` with the prompt's token count comes first.
        """
        timer = self._metrics.generation()
        self._metrics.in_flight.inc()
        try:
            async with aclosing(self._generate(request, timer, announce_start)) as events:
                async for event in events:
                    if isinstance(event, TextFinished):
                        timer.finished(event.prompt_tokens, event.completion_tokens)
                    yield event
        finally:
            self._metrics.in_flight.dec()

    async def _generate(
        self, request: TextGenerationRequest, timer: GenerationTimer, announce_start: bool
    ) -> AsyncGenerator[TextEvent]:
        tokenizer, token_request, syntax = await asyncio.to_thread(self._prepare, request)
        prompt_tokens = len(token_request.prompt_tokens)
        output = OutputEvents(syntax)  # reasoning and tool calls split from the answer text
        if announce_start:
            yield TextStarted(prompt_tokens=prompt_tokens)
        stop_token_ids = frozenset(token_request.stop_token_ids)
        detokenizer = tokenizer.detokenizer(keep_special_tokens=syntax.harmony)
        stop_matcher = StopStringMatcher(request.stop)
        generated_tokens = 0
        pending_logprobs: list[TokenLogprob] = []
        """Logprobs of tokens read since the last delta (their text may be held back)."""
        events = self._token_source.generate(token_request)
        try:
            async for event in events:
                match event:
                    case GeneratedToken(token_id=token_id):
                        timer.token()
                        generated_tokens += 1
                        if token_id in stop_token_ids:
                            continue  # end of sequence: never part of the text
                        if (logprob := token_logprob(event, tokenizer)) is not None:
                            pending_logprobs.append(logprob)
                        scan = stop_matcher.feed(detokenizer.add(token_id))
                        for text_event in output.feed(scan.text, pending_logprobs):
                            yield text_event
                        pending_logprobs.clear()
                        if scan.matched is not None:
                            for text_event in output.finish():
                                yield text_event
                            yield TextFinished(
                                reason="stop",
                                prompt_tokens=prompt_tokens,
                                completion_tokens=generated_tokens,
                                stop_sequence=scan.matched,
                            )
                            return
                    case GenerationFinished(reason=reason, generated_tokens=reported_tokens):
                        scan = stop_matcher.feed(detokenizer.flush())
                        tail = scan.text if scan.matched is not None else scan.text + stop_matcher.flush()
                        for text_event in [*output.feed(tail, pending_logprobs), *output.finish()]:
                            yield text_event
                        pending_logprobs.clear()
                        if scan.matched is None and reason == "stop" and output.tool_calls:
                            reason = "tool_calls"  # the turn ended with calls for the client to run
                        yield TextFinished(
                            reason="stop" if scan.matched is not None else reason,
                            prompt_tokens=prompt_tokens,
                            completion_tokens=reported_tokens,
                            stop_sequence=scan.matched,
                        )
                        return
            raise PipelineError("the token stream ended without a finish event")
        finally:
            await close_token_stream(events)

    async def start(self, request: TextGenerationRequest, *, announce_start: bool = False) -> AsyncGenerator[TextEvent]:
        """Like `run`, but waits for the first text or finish event before returning.

        So every error that comes before any output (unknown model, invalid request, no ready
        instance) is raised here, while a streaming HTTP response can still carry its status.
        """
        events = self.run(request, announce_start=announce_start)
        try:
            first_events = [await anext(events)]
            if isinstance(first_events[0], TextStarted):
                first_events.append(await anext(events))
        except BaseException:
            await events.aclose()
            raise
        return _prepend(first_events, events)

    async def count_prompt_tokens(self, model_id: ModelId, prompt: ChatPrompt | TextPrompt) -> int:
        """The prompt's size in tokens, as a generation would see it (validated the same way)."""
        request = TextGenerationRequest(
            request_id=RequestId("count-tokens"),
            model_id=model_id,
            prompt=prompt,
            max_tokens=None,
            sampling=SamplingOptions(),
        )
        _, token_request, _ = await asyncio.to_thread(self._prepare, request)
        return len(token_request.prompt_tokens)

    def _prepare(self, request: TextGenerationRequest) -> tuple[ModelTokenizer, TokenRequest, OutputSyntax]:
        """Tokenizes and validates against the context window. Blocking: run in a worker thread."""
        tokenizer = self._tokenizers.tokenizer_for(request.model_id)
        prompt_param = "messages" if isinstance(request.prompt, ChatPrompt) else "prompt"
        try:
            prompt_tokens, syntax, forced_grammar = _encode(tokenizer, request)
        except ToolsNotSupportedError as error:
            raise InvalidRequestError(str(error), param="tools", code="tools_not_supported") from error
        except ChatTemplateError as error:
            raise InvalidRequestError(str(error), param=prompt_param, code="invalid_chat_template") from error
        context_length = tokenizer.context_length
        if not prompt_tokens:
            raise InvalidRequestError("The prompt is empty.", param=prompt_param, code="empty_prompt")
        if len(prompt_tokens) >= context_length:
            raise InvalidRequestError(
                f"The prompt has {len(prompt_tokens)} tokens, but this model's context window is "
                f"{context_length} tokens and at least one must remain for the completion.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        remaining = context_length - len(prompt_tokens)
        if request.max_tokens is not None and request.max_tokens > remaining:
            raise InvalidRequestError(
                f"max_tokens is {request.max_tokens}, but the prompt has {len(prompt_tokens)} tokens and this "
                f"model's context window is {context_length} tokens: at most {remaining} can be generated.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        if any(not 0 <= token < tokenizer.vocab_size for token, _ in request.sampling.logit_bias):
            raise InvalidRequestError(
                f"logit_bias names a token id outside this model's vocabulary [0, {tokenizer.vocab_size}).",
                param="logit_bias",
                code="invalid_value",
            )
        sampling = with_generation_defaults(request.sampling, request.omitted_sampling, tokenizer.generation_defaults)
        grammar = forced_grammar or request.grammar  # a forced call has no text answer to format
        if grammar is not None:
            try:
                compiled = compile_output_grammar(grammar, tokenizer.stop_token_ids)
                sampling = sampling.model_copy(update={"grammar": compiled})
            except OutputGrammarError as error:
                raise InvalidRequestError(error.message, param=error.param, code=error.code) from error
        token_request = TokenRequest(
            request_id=request.request_id,
            model_id=request.model_id,
            prompt_tokens=tuple(prompt_tokens),
            max_tokens=request.max_tokens if request.max_tokens is not None else remaining,
            sampling=sampling,
            stop_token_ids=tokenizer.stop_token_ids,
        )
        return tokenizer, token_request, syntax


def _encode(
    tokenizer: ModelTokenizer, request: TextGenerationRequest
) -> tuple[list[int], OutputSyntax, OutputGrammar | None]:
    """The prompt's tokens, how to read the reply, and the grammar of a forced tool call: a chat
    prompt's tools are shown to the model (unless `tool_choice` is `none`) and its calls parsed back
    (forced by a grammar for `required` or a named function); a think block is split off."""
    prompt = request.prompt
    if not isinstance(prompt, ChatPrompt):
        return tokenizer.encode_prompt(prompt), PLAIN_SYNTAX, None
    try:
        check_tool_choice(prompt.tools, request.tool_choice)
    except ValueError as error:
        raise InvalidRequestError(str(error), param="tool_choice", code="invalid_tool_choice") from error
    tools = prompt.tools if request.tool_choice != "none" else ()
    rendered = tokenizer.render_chat(prompt.messages, tools=tools, template_options=prompt.template_options)
    template = tokenizer.chat_template
    call_format = tool_call_format(template) if tools else None
    syntax = output_syntax(template, rendered, call_format)
    forced = None
    if call_format is not None:
        forced = forced_call_grammar(
            tools, request.tool_choice, call_format, close_reasoning=syntax.starts_in_reasoning
        )
    return tokenizer.encode_rendered(rendered), syntax, forced


async def _prepend(first_events: list[TextEvent], rest: AsyncGenerator[TextEvent]) -> AsyncGenerator[TextEvent]:
    try:
        for event in first_events:
            yield event
        async for event in rest:
            yield event
    finally:
        await rest.aclose()


async def close_token_stream(events: AsyncIterator[object]) -> None:
    """Closes a token stream, which cancels the request upstream when it has not finished."""
    if isinstance(events, AsyncGenerator):
        with suppress(Exception):  # a failing close must not hide the outcome of the request
            await events.aclose()
