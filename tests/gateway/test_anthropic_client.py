"""The Anthropic Messages dialect behind a real uvicorn server, called by the official `anthropic` client."""

from collections.abc import Iterator

import anthropic
import pytest

from gateway.api_keys import ApiKeyGuard
from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, REPLY_TEXT, ScriptedTokenSource, scripted_source
from tests.gateway.harness import build_gateway, running_server

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

API_KEY = "test-key"


@pytest.fixture
def source(model_tokenizer: ModelTokenizer) -> ScriptedTokenSource:
    return scripted_source(model_tokenizer)


@pytest.fixture
def client(model_tokenizer: ModelTokenizer, source: ScriptedTokenSource) -> Iterator[anthropic.Anthropic]:
    app = ApiKeyGuard(build_gateway(model_tokenizer, source), (API_KEY.encode(),))
    with (
        running_server(app) as url,  # pyright: ignore[reportArgumentType]
        anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0, timeout=30.0) as client,
    ):
        yield client


def test_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL,
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        extra_body={"temperature": 0},
        metadata={"user_id": "u1"},
    )
    assert message.id.startswith("msg-")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == REPLY_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_stream_with_stop_sequence(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Say hello."}], stop_sequences=["fox"]
    ) as stream:
        event_types = [event.type for event in stream]
        final = stream.get_final_message()
    assert event_types[:2] == ["message_start", "content_block_start"]  # the client drops `ping`
    assert event_types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == "Hello world! 日本語 😀🎉 The quick brown "  # type: ignore[union-attr]
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == "fox"
    assert final.usage.input_tokens > 0


def test_max_tokens_and_count_tokens(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2
    count = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert count.input_tokens == message.usage.input_tokens


def test_tool_blocks_are_rendered_as_text(client: anthropic.Anthropic, source: ScriptedTokenSource) -> None:
    client.messages.create(
        model=MODEL,
        max_tokens=10,
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
        ],
    )
    assert len(source.requests) == 1


def test_errors_in_anthropic_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        client.messages.create(model="claude-17", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model 'claude-17' does not exist or is not served here."},
    }
    with pytest.raises(anthropic.BadRequestError) as missing:
        client.post(
            "/v1/messages", body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, cast_to=object
        )
    assert "max_tokens" in str(missing.value)
    with pytest.raises(anthropic.BadRequestError) as wrong_type:
        client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}], extra_body={"temperature": "hot"}
        )  # type: ignore[arg-type]
    assert wrong_type.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}],
        )
    with (
        anthropic.Anthropic(base_url=str(client.base_url), api_key="wrong", max_retries=0) as wrong_key,
        pytest.raises(anthropic.AuthenticationError) as refused,
    ):
        wrong_key.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
