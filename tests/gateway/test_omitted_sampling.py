"""The OpenAI adapter records which sampling fields a request left out (the model's defaults fill them)."""

import pytest

from gateway.openai_schemas import ChatCompletionRequest, CompletionRequest
from services.kernel.ids import RequestId

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_chat_request_without_sampling_fields_omits_all_three() -> None:
    body = ChatCompletionRequest.model_validate_json('{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    request = body.to_generation_request(RequestId("chatcmpl-1"))
    assert request.omitted_sampling == frozenset({"temperature", "top_p", "top_k"})


def test_given_fields_are_not_omitted() -> None:
    body = CompletionRequest.model_validate_json('{"model": "m", "prompt": "hi", "temperature": 0, "top_k": 5}')
    assert body.to_generation_request(RequestId("cmpl-1")).omitted_sampling == frozenset({"top_p"})
