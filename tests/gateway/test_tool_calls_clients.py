"""Tool calls and reasoning in every dialect, behind a real uvicorn server, called by the official clients.

The scripted "model" (tests/gateway/fakes.py) answers with a Hermes tool call, or a think block and
an answer, in a tiny real tokenizer whose chat template is Qwen2.5's (tools-capable): the calls must
come back parsed (never as content), streamed and not, and tool results must reach the template.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import pytest
from openai import BadRequestError, OpenAI
from openai.types.chat import ChatCompletionToolParam
from openai.types.responses import FunctionToolParam

from gateway.tokenization import ModelTokenizer
from tests.gateway.chat_templates import QWEN25_TOOLS_TEMPLATE, THINKING_TOOLS_TEMPLATE
from tests.gateway.fakes import MODEL, ScriptedTokenSource
from tests.gateway.harness import build_gateway, running_server
from tests.gateway.tiny_tokenizer import build_model_directory

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
REASONING_TEXT = "Paris is the capital of France.\n</think>\n\nParis."
WEATHER_PARAMETERS: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
RESPONSES_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "parameters": WEATHER_PARAMETERS,
    "strict": False,
}
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def tools_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ModelTokenizer:
    directory = build_model_directory(
        tmp_path_factory.mktemp("tools-chat"), chat_template=QWEN25_TOOLS_TEMPLATE, context_length=4096
    )
    return ModelTokenizer.from_directory(directory)


@pytest.fixture(scope="module")
def thinking_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ModelTokenizer:
    directory = build_model_directory(
        tmp_path_factory.mktemp("thinking-chat"), chat_template=THINKING_TOOLS_TEMPLATE, context_length=4096
    )
    return ModelTokenizer.from_directory(directory)


def _source(tokenizer: ModelTokenizer, text: str) -> ScriptedTokenSource:
    return ScriptedTokenSource(reply_tokens=tokenizer.encode_text(text), eos_token_id=tokenizer.stop_token_ids[-1])


def _served(tokenizer: ModelTokenizer, source: ScriptedTokenSource) -> Iterator[str]:
    with running_server(build_gateway(tokenizer, source)) as url:
        yield url


@pytest.fixture
def call_source(tools_tokenizer: ModelTokenizer) -> ScriptedTokenSource:
    return _source(tools_tokenizer, CALL_TEXT)


@pytest.fixture
def call_url(tools_tokenizer: ModelTokenizer, call_source: ScriptedTokenSource) -> Iterator[str]:
    yield from _served(tools_tokenizer, call_source)


@pytest.fixture
def thinking_url(thinking_tokenizer: ModelTokenizer) -> Iterator[str]:
    yield from _served(thinking_tokenizer, _source(thinking_tokenizer, REASONING_TEXT))


def _openai(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def _prompt_text(tokenizer: ModelTokenizer, source: ScriptedTokenSource) -> str:
    return tokenizer.decode(source.requests[-1].prompt_tokens)


def test_openai_call_out_and_result_in(
    call_url: str, call_source: ScriptedTokenSource, tools_tokenizer: ModelTokenizer
) -> None:
    client = _openai(call_url)
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert '"name": "get_weather"' in _prompt_text(tools_tokenizer, call_source)  # the template listed the tool

    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": QUESTION},
            choice.message.model_dump(exclude_none=True),  # type: ignore[misc]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=[WEATHER_TOOL],
    )
    prompt = _prompt_text(tools_tokenizer, call_source)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt


def test_openai_streamed_call(call_url: str) -> None:
    stream = _openai(call_url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    content: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish_reasons: list[str] = []
    for chunk in stream:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += (delta.function.name if delta.function else None) or ""
                entry["arguments"] += (delta.function.arguments if delta.function else None) or ""
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
    assert "".join(content) == ""  # the call never shows as text
    assert finish_reasons == ["tool_calls"]
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_tool_choice_none_hides_the_tools(
    call_url: str, call_source: ScriptedTokenSource, tools_tokenizer: ModelTokenizer
) -> None:
    completion = _openai(call_url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert "<tools>" not in _prompt_text(tools_tokenizer, call_source)
    assert completion.choices[0].message.content == CALL_TEXT  # nothing is parsed as a call
    assert completion.choices[0].finish_reason == "stop"


def test_anthropic_call_out_and_result_in(
    call_url: str, call_source: ScriptedTokenSource, tools_tokenizer: ModelTokenizer
) -> None:
    tool: anthropic.types.ToolParam = {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    with anthropic.Anthropic(base_url=call_url, api_key="unused", max_retries=0, timeout=30) as client:
        message = client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": QUESTION}],
            tools=[tool],
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        assert message.stop_reason == "tool_use"
        [block] = message.content
        assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
        with client.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": QUESTION}], tools=[tool]
        ) as stream:
            streamed = stream.get_final_message()
        assert streamed.stop_reason == "tool_use"
        assert [(block.type, getattr(block, "input", None)) for block in streamed.content] == [
            ("tool_use", {"city": "Paris"})
        ]
        client.messages.create(
            model=MODEL,
            max_tokens=100,
            tools=[tool],
            messages=[
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": [block.model_dump()]},  # type: ignore[list-item]
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny, 21 C"}],
                },
            ],
        )
    prompt = _prompt_text(tools_tokenizer, call_source)
    assert '"arguments": {"city": "Paris"}' in prompt and "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt


def test_responses_function_call_items(
    call_url: str, call_source: ScriptedTokenSource, tools_tokenizer: ModelTokenizer
) -> None:
    client = _openai(call_url)
    tool = RESPONSES_TOOL
    response = client.responses.create(model=MODEL, input=QUESTION, tools=[tool])
    [item] = response.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert json.loads(item.arguments) == {"city": "Paris"}
    events = list(client.responses.create(model=MODEL, input=QUESTION, tools=[tool], stream=True))
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    assert kinds[-1] == "response.completed"
    client.responses.create(
        model=MODEL,
        tools=[tool],
        input=[
            {"role": "user", "content": QUESTION},
            {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments},
            {"type": "function_call_output", "call_id": item.call_id, "output": "sunny, 21 C"},
        ],
    )
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in _prompt_text(tools_tokenizer, call_source)


def test_ollama_tool_calls(call_url: str, call_source: ScriptedTokenSource, tools_tokenizer: ModelTokenizer) -> None:
    client = ollama.Client(host=call_url, timeout=30)
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER_TOOL])  # pyright: ignore[reportUnknownMemberType]
    [call] = reply.message.tool_calls or []
    assert call.function.name == "get_weather" and dict(call.function.arguments) == {"city": "Paris"}
    assert reply.message.content == ""
    chunks = list(
        client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER_TOOL], stream=True)  # pyright: ignore[reportUnknownMemberType]
    )
    streamed = [call for chunk in chunks for call in chunk.message.tool_calls or []]
    assert [call.function.name for call in streamed] == ["get_weather"]
    client.chat(  # pyright: ignore[reportUnknownMemberType]
        model=MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"},
        ],
    )
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in _prompt_text(tools_tokenizer, call_source)


def test_reasoning_in_every_dialect(thinking_url: str) -> None:
    client = _openai(thinking_url)
    message = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    assert message.choices[0].message.content == "Paris."
    assert message.choices[0].message.reasoning_content == "Paris is the capital of France."  # type: ignore[attr-defined]
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True)
    reasoning, content = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    assert (reasoning, content) == ("Paris is the capital of France.", "Paris.")

    response = client.responses.create(model=MODEL, input=QUESTION)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output_text == "Paris."
    events = list(client.responses.create(model=MODEL, input=QUESTION, stream=True))
    deltas = "".join(getattr(event, "delta", "") for event in events if event.type == "response.reasoning_text.delta")
    assert deltas == "Paris is the capital of France."

    with (
        anthropic.Anthropic(base_url=thinking_url, api_key="unused", max_retries=0, timeout=30) as anthropic_client,
        anthropic_client.messages.stream(
            model=MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": QUESTION}],
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as anthropic_stream,
    ):
        final = anthropic_stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Paris is the capital of France."  # type: ignore[union-attr]

    reply = ollama.Client(host=thinking_url, timeout=30).chat(  # pyright: ignore[reportUnknownMemberType]
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], think=True
    )
    assert (reply.message.thinking, reply.message.content) == ("Paris is the capital of France.", "Paris.")
    generated = ollama.Client(host=thinking_url, timeout=30).generate(model=MODEL, prompt=QUESTION, think=True)
    assert (generated.thinking, generated.response) == ("Paris is the capital of France.", "Paris.")


def test_disabled_thinking_reaches_the_template(thinking_tokenizer: ModelTokenizer) -> None:
    source = _source(thinking_tokenizer, "Paris.")
    with running_server(build_gateway(thinking_tokenizer, source)) as url:
        client = _openai(url)
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], reasoning_effort="none"
        )
    assert _prompt_text(thinking_tokenizer, source).endswith("<think>\n\n</think>\n\n")
    assert completion.choices[0].message.content == "Paris."


def test_bad_tools_get_each_dialects_error(call_url: str, model_directory: Path) -> None:
    del model_directory
    client = _openai(call_url)
    bad_name = {"type": "function", "function": {"name": "get weather!", "parameters": {"type": "object"}}}
    with pytest.raises(BadRequestError) as openai_error:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[bad_name])  # type: ignore[list-item]
    assert openai_error.value.status_code == 400
    assert openai_error.value.body["param"].startswith("tools[0]")  # type: ignore[index]
    with pytest.raises(BadRequestError) as unknown_choice:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    assert unknown_choice.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[], tool_choice="required"
        )
    with pytest.raises(BadRequestError):
        bad_arguments = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": bad_arguments}],  # type: ignore[list-item]
        )

    with anthropic.Anthropic(base_url=call_url, api_key="unused", max_retries=0, timeout=30) as anthropic_client:
        with pytest.raises(anthropic.BadRequestError) as anthropic_error:
            anthropic_client.messages.create(
                model=MODEL,
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"name": "get_weather", "input_schema": {"type": "string"}}],  # type: ignore[typeddict-item]
            )
        assert anthropic_error.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError):
            anthropic_client.messages.create(
                model=MODEL,
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
                tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
                tool_choice={"type": "tool", "name": "get_time"},
            )

    with pytest.raises(BadRequestError) as responses_error:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert responses_error.value.status_code == 400

    ollama_reply = httpx.post(
        f"{call_url}/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [bad_name]},
        timeout=30,
    )
    assert ollama_reply.status_code == 400 and "error" in ollama_reply.json()


def test_tools_refused_where_the_template_has_none(model_tokenizer: ModelTokenizer) -> None:
    source = _source(model_tokenizer, "Hello")
    with running_server(build_gateway(model_tokenizer, source)) as url, pytest.raises(BadRequestError) as refused:
        _openai(url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]
        )
    assert refused.value.body["code"] == "tools_not_supported"  # type: ignore[index]
    assert source.requests == []
