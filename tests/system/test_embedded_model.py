"""The embedded SmolLM2 served by `strata run`: exact against mlx-lm, and usable from the openai client."""

import pytest
from openai import OpenAI

from gateway.generation_request import ChatMessage
from gateway.tokenization import ModelTokenizer
from services.kernel.compute_dtype import default_compute_dtype
from services.kernel.settings import DEFAULT_PREFILL_STEP_SIZE, models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from tests.ring_client import generate_tokens, reference_tokens
from tests.system.conftest import RunningCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"
COMPUTE_DTYPE = default_compute_dtype()  # what `strata run` picks on this machine


def _prompt_tokens(cluster: RunningCluster) -> tuple[ModelTokenizer, list[int]]:
    tokenizer = ModelTokenizer.from_directory(models_root(cluster.home) / EMBEDDED_MODEL_ID)
    return tokenizer, tokenizer.encode_chat([ChatMessage(role="user", content=QUESTION)])


def test_two_shards_are_layer_splits_of_the_model(running_cluster: RunningCluster) -> None:
    assert len(running_cluster.shard_addresses) == 2


def test_greedy_and_seeded_tokens_equal_mlx_lm_in_one_process(running_cluster: RunningCluster) -> None:
    tokenizer, prompt = _prompt_tokens(running_cluster)
    model_dir = models_root(running_cluster.home) / EMBEDDED_MODEL_ID
    first = running_cluster.shard_addresses[0]
    greedy, _ = generate_tokens(first, running_cluster.instance_id, prompt, 32)
    reference = reference_tokens(model_dir, prompt, 32, DEFAULT_PREFILL_STEP_SIZE, compute_dtype=COMPUTE_DTYPE)
    assert greedy == reference
    assert "Paris" in tokenizer.decode(greedy)
    seeded, _ = generate_tokens(first, running_cluster.instance_id, prompt, 32, 0.9, 0.95, seed=7)
    assert seeded == reference_tokens(
        model_dir, prompt, 32, DEFAULT_PREFILL_STEP_SIZE, 0.9, 0.95, seed=7, compute_dtype=COMPUTE_DTYPE
    )


def test_openai_client_chat_completion_answers_paris(running_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=f"{running_cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0
    )
    choice = reply.choices[0]
    assert choice.message.content is not None
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_openai_client_streams_the_same_text(running_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=f"{running_cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=120)
    whole = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0
    )
    stream = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0, stream=True
    )
    pieces: list[str] = []
    reasons: list[str] = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason is not None:
                reasons.append(choice.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons == ["stop"]


def test_max_tokens_ends_with_length(running_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=f"{running_cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.completions.create(model=EMBEDDED_MODEL_ID, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_models_endpoint_lists_the_embedded_model(running_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=f"{running_cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert [model.id for model in client.models.list()] == [EMBEDDED_MODEL_ID]
