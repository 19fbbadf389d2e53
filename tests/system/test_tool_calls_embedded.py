"""Tool calls and reasoning on a real cluster: the embedded SmolLM2's weights behind a tools-capable template.

SmolLM2's own template renders no tools, so the test store holds `smollm2-tools`: the embedded
model's files (linked) with a tokenizer_config.json whose chat template is Qwen2.5's Hermes-style
tool template, with Qwen3's `enable_thinking` switch, opening `<think>` in the generation prompt
(tests/gateway/chat_templates.py; both families speak ChatML, as SmolLM2 does). `strata run --model
smollm2-tools` serves it over two shard servers. A named or `required` tool_choice forces a valid
call through the grammar on the last shard; the result goes back as a `tool` turn / `tool_result`
block and the model answers in text. Greedy throughout, so every run is the same.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from gateway.assistant_output import AssistantOutputSplitter, output_syntax
from gateway.generation_request import ChatMessage
from gateway.output_pieces import OutputPiece, ReasoningPiece, TextPiece
from gateway.tokenization import ModelTokenizer
from services.kernel.settings import models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from tests.gateway.chat_templates import THINKING_TOOLS_TEMPLATE
from tests.system.conftest import RunningCluster, serve_local_cluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(900)]

MODEL_ID = "smollm2-tools"
QUESTION = "What is the weather like in Paris today?"
WEATHER_PARAMETERS: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER_PARAMETERS},
}
MAX_TOKENS = 48


def install_tools_model(embedded_models: Path, store: Path, chat_template: str) -> Path:
    """The embedded model's files (links) under `MODEL_ID`, with `chat_template` in its tokenizer config."""
    source, target = embedded_models / EMBEDDED_MODEL_ID, store / MODEL_ID
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name != "tokenizer_config.json":
            (target / file.name).symlink_to(file.resolve())
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["chat_template"] = chat_template
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def tools_model_dir(embedded_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("tools-home")
    return install_tools_model(embedded_models, models_root(home), THINKING_TOOLS_TEMPLATE)


@pytest.fixture(scope="module")
def tools_cluster(tools_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    home = tools_model_dir.parent.parent
    yield from serve_local_cluster(home, tmp_path_factory.mktemp("tools-logs"), ["--model", MODEL_ID])


def _openai(cluster: RunningCluster) -> OpenAI:
    return OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=300)


def _valid_weather_arguments(arguments: object) -> None:
    assert isinstance(arguments, dict) and list(arguments) == ["city"]  # pyright: ignore[reportUnknownArgumentType]
    city = arguments["city"]  # pyright: ignore[reportUnknownVariableType]
    assert isinstance(city, str) and len(city) <= 40


def test_openai_forced_call_round_trip(tools_cluster: RunningCluster) -> None:
    client = _openai(tools_cluster)
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=question,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    _valid_weather_arguments(arguments)

    streamed_arguments = ""
    finish_reasons: list[str] = []
    for chunk in client.chat.completions.create(
        model=MODEL_ID,
        messages=question,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
    ):
        for streamed in chunk.choices:
            assert not streamed.delta.content
            for delta in streamed.delta.tool_calls or []:
                streamed_arguments += (delta.function.arguments if delta.function else None) or ""
            if streamed.finish_reason is not None:
                finish_reasons.append(streamed.finish_reason)
    assert finish_reasons == ["tool_calls"]
    assert json.loads(streamed_arguments) == arguments  # one tool: required forces the same call

    answer = client.chat.completions.create(
        model=MODEL_ID,
        messages=[
            *question,
            choice.message.model_dump(exclude_none=True),  # type: ignore[misc]
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees Celsius."},
        ],
        tools=[WEATHER_TOOL],
        reasoning_effort="none",
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    final = answer.choices[0]
    assert final.finish_reason in ("stop", "length")
    assert final.message.content and "<tool_call>" not in final.message.content
    assert final.message.tool_calls is None


def test_anthropic_forced_call_round_trip(tools_cluster: RunningCluster) -> None:
    tool: anthropic.types.ToolParam = {"name": "get_weather", "input_schema": WEATHER_PARAMETERS}  # type: ignore[typeddict-item]
    with anthropic.Anthropic(
        base_url=tools_cluster.gateway_url, api_key="unused", max_retries=0, timeout=300
    ) as client:
        message = client.messages.create(
            model=MODEL_ID,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": QUESTION}],
            tools=[tool],
            tool_choice={"type": "tool", "name": "get_weather"},
            extra_body={"temperature": 0},
        )
        assert message.stop_reason == "tool_use"
        [block] = message.content
        assert block.type == "tool_use" and block.name == "get_weather"
        _valid_weather_arguments(block.input)
        with client.messages.stream(
            model=MODEL_ID,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": QUESTION}],
            tools=[tool],
            tool_choice={"type": "any"},
            extra_body={"temperature": 0},
        ) as stream:
            streamed = stream.get_final_message()
        assert streamed.stop_reason == "tool_use"
        assert [(part.type, getattr(part, "input", None)) for part in streamed.content] == [("tool_use", block.input)]
        answer = client.messages.create(
            model=MODEL_ID,
            max_tokens=MAX_TOKENS,
            tools=[tool],
            thinking={"type": "disabled"},
            extra_body={"temperature": 0},
            messages=[
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": [block.model_dump()]},  # type: ignore[list-item]
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Sunny."}]},
            ],
        )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [part.type for part in answer.content] == ["text"]
    assert answer.content[0].text  # type: ignore[union-attr]


def _split(syntax_template: str, rendered: str, text: str) -> tuple[str, str]:
    splitter = AssistantOutputSplitter(output_syntax(syntax_template, rendered, None))
    pieces: list[OutputPiece] = [*splitter.feed(text), *splitter.finish()]
    reasoning = "".join(piece.text for piece in pieces if isinstance(piece, ReasoningPiece))
    return reasoning, "".join(piece.text for piece in pieces if isinstance(piece, TextPiece))


def test_reasoning_split_equals_the_raw_text(tools_cluster: RunningCluster, tools_model_dir: Path) -> None:
    """The chat reply's reasoning and content are the raw completion of the same rendered prompt, split."""
    client = _openai(tools_cluster)
    tokenizer = ModelTokenizer.from_directory(tools_model_dir)
    rendered = tokenizer.render_chat([ChatMessage(role="user", content=QUESTION)])
    assert rendered.endswith("<think>\n")
    raw = client.completions.create(model=MODEL_ID, prompt=rendered, temperature=0, max_tokens=MAX_TOKENS)
    expected = _split(tokenizer.chat_template, rendered, raw.choices[0].text)
    assert expected[0], "the template opened a think block: the reply starts as reasoning"

    chat = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=MAX_TOKENS
    )
    message = chat.choices[0].message
    assert (message.reasoning_content, message.content or "") == expected  # type: ignore[attr-defined]
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
    ):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    assert (reasoning, content) == expected

    response = client.responses.create(model=MODEL_ID, input=QUESTION, temperature=0, max_output_tokens=MAX_TOKENS)
    assert response.output[0].type == "reasoning"
    with anthropic.Anthropic(base_url=tools_cluster.gateway_url, api_key="unused", max_retries=0, timeout=300) as ant:
        message_reply = ant.messages.create(
            model=MODEL_ID,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"temperature": 0},
        )
    assert message_reply.content[0].type == "thinking"
    assert message_reply.content[0].thinking == expected[0]  # type: ignore[union-attr]
