"""The embedded SmolLM2 served by `strata run`, asked the same greedy question in every dialect.

OpenAI chat, Anthropic Messages, Ollama chat and Responses render the same conversation with the
model's own chat template and go through the one generation path: the texts must be equal.
"""

import anthropic
import ollama
import pytest
from openai import OpenAI

from services.models.embedded_model import EMBEDDED_MODEL_ID
from tests.system.conftest import RunningCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"
MAX_TOKENS = 24


def test_greedy_text_is_equal_across_dialects(running_cluster: RunningCluster) -> None:
    url = running_cluster.gateway_url
    openai_client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    chat = openai_client.chat.completions.create(
        model=EMBEDDED_MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=MAX_TOKENS
    )
    expected = chat.choices[0].message.content
    assert expected and "Paris" in expected

    response = openai_client.responses.create(
        model=EMBEDDED_MODEL_ID, input=QUESTION, temperature=0, max_output_tokens=MAX_TOKENS
    )
    assert response.output_text == expected

    with anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120) as anthropic_client:
        message = anthropic_client.messages.create(
            model=EMBEDDED_MODEL_ID,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"temperature": 0},
        )
        with anthropic_client.messages.stream(
            model=EMBEDDED_MODEL_ID,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"temperature": 0},
        ) as stream:
            streamed = stream.get_final_message()
    assert message.content[0].text == expected  # type: ignore[union-attr]
    assert streamed.content[0].text == expected  # type: ignore[union-attr]
    assert message.usage.input_tokens == chat.usage.prompt_tokens if chat.usage else False

    ollama_client = ollama.Client(host=url, timeout=120)
    reply = ollama_client.chat(  # pyright: ignore[reportUnknownMemberType]  (the client types `tools` loosely)
        model=EMBEDDED_MODEL_ID,
        messages=[ollama.Message(role="user", content=QUESTION)],
        options={"temperature": 0, "num_predict": MAX_TOKENS},
        stream=False,
    )
    assert reply.message.content == expected
