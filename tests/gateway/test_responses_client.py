"""The Responses dialect behind a real uvicorn server, called by the official `openai` client."""

from collections.abc import Iterator

import openai
import pytest

from gateway.tokenization import ModelTokenizer
from tests.gateway.fakes import MODEL, REPLY_TEXT, scripted_source
from tests.gateway.harness import build_gateway, running_server

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.fixture
def client(model_tokenizer: ModelTokenizer) -> Iterator[openai.OpenAI]:
    with (
        running_server(build_gateway(model_tokenizer, scripted_source(model_tokenizer))) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30.0) as client,
    ):
        yield client


def test_response(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}],
        temperature=0,
    )
    assert response.status == "completed"
    assert response.output_text == REPLY_TEXT
    assert response.usage is not None and response.usage.output_tokens > 0
    short = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert short.status == "incomplete"
    assert short.incomplete_details is not None and short.incomplete_details.reason == "max_output_tokens"


def test_response_stream(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Say hello.", stream=True))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == REPLY_TEXT


def test_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-17", input="hi")
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input="hi", temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        image = {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}
        client.post("/responses", body={"model": MODEL, "input": [image]}, cast_to=object)
    with pytest.raises(openai.BadRequestError) as not_stored:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp-1")
    assert not_stored.value.param == "previous_response_id"
