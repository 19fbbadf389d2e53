"""Each dialect's sampling options reach the shards' `SamplingOptions`; `n` fans out into seeded
choices; logprobs the shards send come back on the text. In memory, over a scripted token source."""

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import httpx
import pytest

from gateway.token_source import GeneratedToken, GenerationFinished, TokenEvent, TokenRequest
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, REPLY_TEXT, ScriptedTokenSource, scripted_source
from tests.gateway.harness import build_gateway, in_memory_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio, pytest.mark.timeout(60)]

USER = {"role": "user", "content": "Say hello."}


async def post(source: object, tokenizer: ModelTokenizer, path: str, body: dict[str, object]) -> httpx.Response:
    app = build_gateway(tokenizer, source)  # pyright: ignore[reportArgumentType]  (each fake is a TokenSource)
    async with in_memory_client(app) as client:
        return await client.post(path, json=body)


async def test_openai_options_reach_the_sampling_options(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [USER],
        "temperature": 0.5,
        "seed": 9,
        "min_p": 0.1,
        "logit_bias": {"5": 2, "7": -100},
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "repetition_penalty": 1.2,
        "logprobs": True,
        "top_logprobs": 3,
        "user": "someone",
        "parallel_tool_calls": True,
    }
    response = await post(source, model_tokenizer, "/v1/chat/completions", body)

    assert response.status_code == 200, response.text
    sampling = source.requests[0].sampling
    assert (sampling.min_p, sampling.logit_bias) == (0.1, ((5, 2.0), (7, -100.0)))
    assert (sampling.presence_penalty, sampling.frequency_penalty, sampling.repetition_penalty) == (0.5, -0.25, 1.2)
    assert (sampling.logprobs, sampling.top_logprobs, sampling.seed) == (True, 3, 9)


async def test_n_fans_out_into_choices_seeded_seed_plus_i(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    body: dict[str, object] = {"model": MODEL, "messages": [USER], "temperature": 1.0, "seed": 100, "n": 3}
    response = await post(source, model_tokenizer, "/v1/chat/completions", body)

    reply = response.json()
    assert [choice["index"] for choice in reply["choices"]] == [0, 1, 2]
    assert [choice["message"]["content"] for choice in reply["choices"]] == [REPLY_TEXT] * 3
    assert sorted(request.sampling.seed for request in source.requests) == [100, 101, 102]
    assert sorted(request.request_id.rsplit("-", 1)[1] for request in source.requests) == ["c0", "c1", "c2"]
    single = len(source.requests[0].prompt_tokens)
    assert reply["usage"]["prompt_tokens"] == single
    assert reply["usage"]["completion_tokens"] == 3 * (len(model_tokenizer.encode_text(REPLY_TEXT)) + 1)


async def test_a_failing_choice_ends_the_stream_with_an_error_and_cancels_the_others(
    model_tokenizer: ModelTokenizer,
) -> None:
    source = scripted_source(model_tokenizer, fail_after_tokens=3)
    body: dict[str, object] = {"model": MODEL, "messages": [USER], "n": 2, "stream": True}
    response = await post(source, model_tokenizer, "/v1/chat/completions", body)

    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "error" in json.loads(events[-2])
    assert len(source.cancelled) == 2


@dataclass
class LogprobSource:
    """Answers `REPLY_TEXT` with a made-up logprob per token and two alternatives."""

    tokens: list[int]
    eos: int
    requests: list[TokenRequest] = field(default_factory=list[TokenRequest])

    async def generate(self, request: TokenRequest) -> AsyncGenerator[TokenEvent]:
        self.requests.append(request)
        for position, token_id in enumerate([*self.tokens, self.eos]):
            value = -0.5 - position
            yield GeneratedToken(token_id=token_id, logprob=value, top_logprobs=((token_id, value), (3, value - 1)))
        yield GenerationFinished(reason="stop", prompt_tokens=len(request.prompt_tokens), generated_tokens=0)


async def test_logprobs_come_back_per_token_streamed_and_not(model_tokenizer: ModelTokenizer) -> None:
    tokens = model_tokenizer.encode_text(REPLY_TEXT)
    source = LogprobSource(tokens, model_tokenizer.stop_token_ids[-1])
    body: dict[str, object] = {"model": MODEL, "messages": [USER], "logprobs": True, "top_logprobs": 2}

    whole = (await post(source, model_tokenizer, "/v1/chat/completions", body)).json()
    streamed = await post(source, model_tokenizer, "/v1/chat/completions", {**body, "stream": True})

    content = whole["choices"][0]["logprobs"]["content"]
    assert [entry["logprob"] for entry in content] == [-0.5 - position for position in range(len(tokens))]
    assert [entry["token"] for entry in content] == [model_tokenizer.decode([token]) for token in tokens]
    # The tokens' own bytes joined are the text, though some tokens hold parts of characters.
    assert bytes(byte for entry in content for byte in entry["bytes"]).decode() == REPLY_TEXT
    assert any("\ufffd" in entry["token"] for entry in content)
    assert [len(entry["top_logprobs"]) for entry in content] == [2] * len(tokens)
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    streamed_content = [
        entry
        for chunk in chunks
        for choice in chunk["choices"]
        if choice["logprobs"]
        for entry in choice["logprobs"]["content"]
    ]
    assert streamed_content == content
    completion = (
        await post(source, model_tokenizer, "/v1/completions", {"model": MODEL, "prompt": "Hi", "logprobs": 1})
    ).json()
    legacy = completion["choices"][0]["logprobs"]
    assert legacy["token_logprobs"] == [-0.5 - position for position in range(len(tokens[:16]))]
    assert legacy["text_offset"][0] == 0 and len(legacy["tokens"]) == len(legacy["text_offset"])


async def test_ollama_options_reach_the_sampling_options(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    options = {
        "repeat_penalty": 1.15,
        "repeat_last_n": 32,
        "min_p": 0.05,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.2,
        "top_k": 20,
        "seed": 4,
        "temperature": 0.7,
    }
    body: dict[str, object] = {"model": MODEL, "messages": [USER], "stream": False, "options": options}
    response = await post(source, model_tokenizer, "/api/chat", body)

    assert response.status_code == 200, response.text
    sampling = source.requests[0].sampling
    assert (sampling.repetition_penalty, sampling.repetition_context_size) == (1.15, 32)
    assert (sampling.min_p, sampling.presence_penalty, sampling.frequency_penalty) == (0.05, 0.3, 0.2)
    assert (sampling.top_k, sampling.seed, sampling.temperature) == (20, 4, 0.7)


@pytest.mark.parametrize(("window", "penalty", "context"), [(0, 0.0, 20), (-1, 1.3, 2**31 - 1), (None, 1.3, 20)])
async def test_ollama_repeat_last_n(
    model_tokenizer: ModelTokenizer, window: int | None, penalty: float, context: int
) -> None:
    source = scripted_source(model_tokenizer)
    options: dict[str, object] = {"repeat_penalty": 1.3}
    if window is not None:
        options["repeat_last_n"] = window
    body: dict[str, object] = {"model": MODEL, "prompt": "Hi", "stream": False, "options": options}
    await post(source, model_tokenizer, "/api/generate", body)

    sampling = source.requests[0].sampling
    assert sampling.repetition_penalty == penalty
    if penalty:
        assert sampling.repetition_context_size == context


@pytest.mark.parametrize("options", [{"repeat_penalty": 0}, {"min_p": 2}, {"repeat_last_n": -5}])
async def test_bad_ollama_options_are_400_in_ollamas_shape(
    model_tokenizer: ModelTokenizer, options: dict[str, object]
) -> None:
    source = ScriptedTokenSource([1], model_tokenizer.stop_token_ids[-1])
    body: dict[str, object] = {"model": MODEL, "prompt": "Hi", "options": options}
    response = await post(source, model_tokenizer, "/api/generate", body)

    assert response.status_code == 400
    assert "error" in response.json() and not source.requests


async def test_anthropic_top_k_reaches_the_sampling_options(model_tokenizer: ModelTokenizer) -> None:
    source = scripted_source(model_tokenizer)
    body: dict[str, object] = {"model": MODEL, "max_tokens": 8, "messages": [USER], "top_k": 7}
    response = await post(source, model_tokenizer, "/v1/messages", body)

    assert response.status_code == 200, response.text
    assert source.requests[0].sampling.top_k == 7


@pytest.mark.parametrize("stream", [False, True])
async def test_n_choices_that_cannot_start_get_the_status_of_the_error(
    model_tokenizer: ModelTokenizer, stream: bool
) -> None:
    source = scripted_source(model_tokenizer, unavailable=True)
    body: dict[str, object] = {"model": MODEL, "messages": [USER], "n": 3, "stream": stream}
    response = await post(source, model_tokenizer, "/v1/chat/completions", body)

    assert response.status_code == 503
    assert response.json()["error"]["type"]
