"""OpenAI's sampling options, logprobs and `n` through `strata run` (two shards of the embedded
SmolLM2), as the official openai client sends and reads them.

Logprobs are the last shard's float32 values: bitwise those plain mlx-lm's `generate_step` yields for
the same prompt (`tests/sampling_reference.py`). Choice i of `n` equals a request seeded seed + i.
"""

import math
from collections import defaultdict
from typing import cast

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from gateway.generation_request import ChatMessage
from gateway.tokenization import ModelTokenizer
from services.kernel.compute_dtype import default_compute_dtype
from services.kernel.sampling import SamplingOptions
from services.kernel.settings import DEFAULT_PREFILL_STEP_SIZE, models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from tests.sampling_reference import reference_steps
from tests.system.conftest import RunningCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]

QUESTION = "Name three colours of the rainbow."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
COMPUTE_DTYPE = default_compute_dtype()


def client_of(cluster: RunningCluster) -> OpenAI:
    return OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_chat_logprobs_are_mlx_lms_bitwise_streamed_and_not(running_cluster: RunningCluster) -> None:
    model_dir = models_root(running_cluster.home) / EMBEDDED_MODEL_ID
    tokenizer = ModelTokenizer.from_directory(model_dir)
    prompt = tokenizer.encode_chat([ChatMessage(role="user", content=QUESTION)])
    options = SamplingOptions(presence_penalty=0.5, logprobs=True, top_logprobs=4)
    reference = reference_steps(model_dir, prompt, 10, DEFAULT_PREFILL_STEP_SIZE, options, COMPUTE_DTYPE)
    client = client_of(running_cluster)

    reply = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID,
        messages=MESSAGES,
        temperature=0,
        max_completion_tokens=10,
        presence_penalty=0.5,
        logprobs=True,
        top_logprobs=4,
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    expected = [step for step in reference if step.token_id not in tokenizer.stop_token_ids]
    assert [entry.logprob for entry in entries] == [step.logprob for step in expected]
    assert [entry.token for entry in entries] == [tokenizer.decode([step.token_id]) for step in expected]
    assert "".join(entry.token for entry in entries) == choice.message.content
    assert bytes(byte for entry in entries for byte in entry.bytes or []).decode() == choice.message.content
    for entry, step in zip(entries, expected, strict=True):
        assert [(top.token, top.logprob) for top in entry.top_logprobs] == [
            (tokenizer.decode([token]), logprob) for token, logprob in step.top_logprobs
        ]
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(value) for value in values) <= 1 + 1e-6

    streamed = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID,
        messages=MESSAGES,
        temperature=0,
        max_completion_tokens=10,
        presence_penalty=0.5,
        logprobs=True,
        top_logprobs=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed_entries: list[float] = []
    usage = None
    for chunk in streamed:
        usage = chunk.usage or usage
        for part in chunk.choices:
            if part.logprobs is not None and part.logprobs.content:
                streamed_entries.extend(entry.logprob for entry in part.logprobs.content)
    assert streamed_entries == [entry.logprob for entry in entries]
    assert usage is not None and reply.usage is not None
    assert usage.completion_tokens == reply.usage.completion_tokens


def test_completions_logprobs_in_the_legacy_shape(running_cluster: RunningCluster) -> None:
    client = client_of(running_cluster)
    reply = client.completions.create(
        model=EMBEDDED_MODEL_ID, prompt="The rainbow has", max_tokens=6, temperature=0, logprobs=3
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None and logprobs.text_offset is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert logprobs.text_offset[0] == 0
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert max(top.values()) == value  # greedy: the token is the best one
        assert top[token] == value


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_n_choices_equal_requests_seeded_seed_plus_i_streamed_and_not(
    running_cluster: RunningCluster, endpoint: str
) -> None:
    client = client_of(running_cluster)
    seed, choices = 42, 3

    def texts_of(n: int, seed: int, stream: bool) -> tuple[list[str], int, int]:
        """Each choice's text, and the usage (prompt, completion tokens)."""
        if endpoint == "chat":
            if not stream:
                reply = client.chat.completions.create(
                    model=EMBEDDED_MODEL_ID, messages=MESSAGES, temperature=1.0, seed=seed, n=n, max_tokens=12
                )
                assert reply.usage is not None
                assert [choice.index for choice in reply.choices] == list(range(n))
                texts = [choice.message.content or "" for choice in reply.choices]
                return texts, reply.usage.prompt_tokens, reply.usage.completion_tokens
            chunks = client.chat.completions.create(
                model=EMBEDDED_MODEL_ID,
                messages=MESSAGES,
                temperature=1.0,
                seed=seed,
                n=n,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts: defaultdict[int, str] = defaultdict(str)
            usage = None
            for chunk in chunks:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    parts[choice.index] += choice.delta.content or ""
            assert usage is not None
            return [parts[index] for index in range(n)], usage.prompt_tokens, usage.completion_tokens
        if not stream:
            completion = client.completions.create(
                model=EMBEDDED_MODEL_ID, prompt="Colours:", temperature=1.0, seed=seed, n=n, max_tokens=12
            )
            assert completion.usage is not None
            texts = [choice.text for choice in sorted(completion.choices, key=lambda choice: choice.index)]
            return texts, completion.usage.prompt_tokens, completion.usage.completion_tokens
        pieces: defaultdict[int, str] = defaultdict(str)
        completion_usage = None
        for chunk in client.completions.create(
            model=EMBEDDED_MODEL_ID,
            prompt="Colours:",
            temperature=1.0,
            seed=seed,
            n=n,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        ):
            completion_usage = chunk.usage or completion_usage
            for choice in chunk.choices:
                pieces[choice.index] += choice.text
        assert completion_usage is not None
        return [pieces[index] for index in range(n)], completion_usage.prompt_tokens, completion_usage.completion_tokens

    separate = [texts_of(1, seed + index, stream=False) for index in range(choices)]
    whole = texts_of(choices, seed, stream=False)
    streamed = texts_of(choices, seed, stream=True)

    expected_texts = [texts[0] for texts, _, _ in separate]
    assert len(set(expected_texts)) > 1  # the seeds really differ
    assert whole[0] == expected_texts
    assert streamed[0] == expected_texts
    expected_usage = (separate[0][1], sum(completion for _, _, completion in separate))
    assert whole[1:] == expected_usage
    assert streamed[1:] == expected_usage


def test_stop_seed_user_and_tool_fields_are_accepted(running_cluster: RunningCluster) -> None:
    client = client_of(running_cluster)
    reply = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID,
        messages=MESSAGES,
        temperature=0.7,
        seed=3,
        max_completion_tokens=20,
        user="someone",
        parallel_tool_calls=False,
        stop=["\n"],
    )
    again = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID, messages=MESSAGES, temperature=0.7, seed=3, max_completion_tokens=20, stop=["\n"]
    )
    assert reply.choices[0].message.content == again.choices[0].message.content
    assert "\n" not in (reply.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 9}, "n"),
        ({"logit_bias": {"not-a-token": 5}}, "logit_bias"),
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
    ],
)
def test_bad_values_are_400_in_openais_error_shape(
    running_cluster: RunningCluster, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client_of(running_cluster).chat.completions.create(
            model=EMBEDDED_MODEL_ID, messages=MESSAGES, max_tokens=4, extra_body=fields
        )
    assert raised.value.status_code == 400
    body = raised.value.body
    assert isinstance(body, dict)
    assert cast(dict[str, object], body).get("param") == param, body
