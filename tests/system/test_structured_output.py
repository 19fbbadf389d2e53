"""Structured output on the embedded SmolLM2 served by `strata run` (two shard processes), through the
official clients: `json_schema` output validates for 20 seeded samples, `json_object` output parses
(whole and streamed, chat and completions), the Responses API's `text.format` and Ollama's `format`
hold too, a bad schema is a 400; and greedy and seeded constrained tokens over the two shards equal
strata on one shard in this process (the reference for a grammar mask: mlx-lm has none).
"""

import json
import queue
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import ollama
import openai
import pytest
from openai import OpenAI

from gateway.generation_request import ChatMessage
from gateway.output_grammar import compile_output_grammar, json_value_grammar
from gateway.tokenization import ModelTokenizer
from services.kernel.compute_dtype import default_compute_dtype
from services.kernel.ids import InstanceId, RequestId
from services.kernel.sampling import SamplingOptions
from services.kernel.settings import DEFAULT_PREFILL_STEP_SIZE, models_root
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.platform.grpc_server import cluster_sync_channel
from shard_server.model_stage import StageRange
from shard_server.ring_messages import (
    Effect,
    LoadStage,
    RequestFailed,
    RequestFinished,
    StageLoadFailed,
    StageLoadSucceeded,
    StartRequest,
    TokenGenerated,
)
from shard_server.stage_worker import StageWorker
from strata_wire import common_pb2, shard_pb2, shard_pb2_grpc
from tests.system.conftest import RunningCluster

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(900)]

CITY_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "country": {"type": "string", "maxLength": 16},
        "population": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
        "is_capital": {"type": "boolean"},
        "continent": {"enum": ["Africa", "America", "Asia", "Europe", "Oceania"]},
    },
    "required": ["city", "country", "population", "is_capital", "continent"],
    "additionalProperties": False,
}
QUESTION = "Describe the capital of France as JSON."
MAX_TOKENS = 96
SAMPLES = 20


def client(cluster: RunningCluster) -> OpenAI:
    return OpenAI(base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, timeout=600)


def city_format() -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}


def test_json_schema_output_validates_for_20_seeded_samples(running_cluster: RunningCluster) -> None:
    def sample(seed: int) -> tuple[str | None, str]:
        reply = client(running_cluster).chat.completions.create(
            model=EMBEDDED_MODEL_ID,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=1.0,
            seed=seed,
            max_tokens=MAX_TOKENS,
            response_format=city_format(),  # type: ignore[arg-type]
        )
        return reply.choices[0].message.content, reply.choices[0].finish_reason

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(sample, range(SAMPLES)))
    documents: list[object] = []
    for content, finish_reason in replies:
        assert finish_reason == "stop", content
        assert content is not None
        document = json.loads(content)
        jsonschema.validate(document, CITY_SCHEMA)
        documents.append(document)
    assert len({json.dumps(document) for document in documents}) > 1, "seeded samples differ"


def test_json_object_output_parses_whole_and_streamed(running_cluster: RunningCluster) -> None:
    openai_client = client(running_cluster)
    colours = "List three colours in a JSON object."
    whole = openai_client.chat.completions.create(
        model=EMBEDDED_MODEL_ID,
        messages=[{"role": "user", "content": colours}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        response_format={"type": "json_object"},
    )
    content = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop", content
    assert isinstance(json.loads(content or ""), dict)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in openai_client.chat.completions.create(
            model=EMBEDDED_MODEL_ID,
            messages=[{"role": "user", "content": colours}],
            temperature=0,
            max_tokens=MAX_TOKENS,
            response_format={"type": "json_object"},
            stream=True,
        )
        if chunk.choices
    )
    assert streamed == content
    completion = openai_client.completions.create(
        model=EMBEDDED_MODEL_ID,
        prompt='A cat as JSON: {"name": "Tom", "age": 3}\nThe same cat as JSON:',
        temperature=0,
        max_tokens=MAX_TOKENS,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert completion.choices[0].finish_reason == "stop", completion.choices[0].text
    assert isinstance(json.loads(completion.choices[0].text), dict)


def test_responses_text_format_and_ollama_format_hold_to_the_schema(running_cluster: RunningCluster) -> None:
    response = client(running_cluster).responses.create(
        model=EMBEDDED_MODEL_ID,
        input=QUESTION,
        temperature=0,
        max_output_tokens=MAX_TOKENS,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}},
    )
    jsonschema.validate(json.loads(response.output_text), CITY_SCHEMA)
    reply = ollama.Client(host=running_cluster.gateway_url, timeout=600).chat(  # pyright: ignore[reportUnknownMemberType]
        model=EMBEDDED_MODEL_ID,
        messages=[ollama.Message(role="user", content=QUESTION)],
        format=CITY_SCHEMA,
        options={"temperature": 0, "num_predict": MAX_TOKENS},
        stream=False,
    )
    jsonschema.validate(json.loads(reply.message.content or ""), CITY_SCHEMA)
    assert reply.done_reason == "stop"


def test_a_bad_schema_is_a_400_naming_response_format(running_cluster: RunningCluster) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(running_cluster).chat.completions.create(
            model=EMBEDDED_MODEL_ID,
            messages=[{"role": "user", "content": QUESTION}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": {"type": "object", "properties": {"a": {"type": "txt"}}}},
            },
        )
    assert refused.value.status_code == 400
    assert refused.value.param == "response_format"
    assert "Invalid JSON schema for response_format" in refused.value.message


# --- exactness: two shard processes against strata on one shard in this process ---


def ring_tokens(
    cluster: RunningCluster, prompt: Sequence[int], stop_token_ids: Sequence[int], sampling: SamplingOptions
) -> list[int]:
    with cluster_sync_channel(cluster.shard_addresses[0]) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(
            shard_pb2.GenerateRequest(
                request_id=uuid.uuid4().hex,
                instance_id=cluster.instance_id,
                prompt_tokens=list(prompt),
                max_tokens=MAX_TOKENS,
                stop_token_ids=list(stop_token_ids),
                sampling=common_pb2.SamplingParams(
                    temperature=sampling.temperature, seed=sampling.seed, grammar=sampling.grammar or ""
                ),
            ),
            timeout=600,
        )
        return [reply.token.token_id for reply in replies if reply.HasField("token")]


def one_shard_tokens(
    model_dir: Path, prompt: Sequence[int], stop_token_ids: Sequence[int], samplings: Sequence[SamplingOptions]
) -> list[list[int]]:
    """Each request run alone on one in-process stage worker holding every layer (first and last shard)."""
    effects: queue.Queue[Effect] = queue.Queue()
    worker = StageWorker(effects.put)
    worker.start()
    try:
        num_layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
        worker.submit(
            LoadStage(
                InstanceId("reference"),
                model_dir,
                StageRange(0, num_layers, num_layers),
                DEFAULT_PREFILL_STEP_SIZE,
                default_compute_dtype(),
                1,
            )
        )
        loaded = effects.get(timeout=300)
        assert isinstance(loaded, StageLoadSucceeded), loaded
        runs: list[list[int]] = []
        for index, sampling in enumerate(samplings):
            request_id = RequestId(f"reference-{index}")
            worker.submit(StartRequest(request_id, tuple(prompt), MAX_TOKENS, frozenset(stop_token_ids), sampling))
            tokens: list[int] = []
            while True:
                effect = effects.get(timeout=300)
                assert not isinstance(effect, RequestFailed | StageLoadFailed), effect
                if isinstance(effect, TokenGenerated):
                    tokens.append(effect.token_id)
                if isinstance(effect, RequestFinished):
                    break
            runs.append(tokens)
        return runs
    finally:
        worker.stop()


def test_constrained_tokens_over_two_shards_equal_one_shard_in_one_process(running_cluster: RunningCluster) -> None:
    model_dir = models_root(running_cluster.home) / EMBEDDED_MODEL_ID
    tokenizer = ModelTokenizer.from_directory(model_dir)
    prompt = tokenizer.encode_chat([ChatMessage(role="user", content=QUESTION)])
    grammar = compile_output_grammar(json_value_grammar(CITY_SCHEMA), tokenizer.stop_token_ids)
    samplings = [SamplingOptions(grammar=grammar), SamplingOptions(temperature=0.9, seed=7, grammar=grammar)]

    over_two_shards = [
        ring_tokens(running_cluster, prompt, tokenizer.stop_token_ids, sampling) for sampling in samplings
    ]
    reference = one_shard_tokens(model_dir, prompt, tokenizer.stop_token_ids, samplings)

    assert over_two_shards == reference
    for tokens in over_two_shards:
        assert tokens[-1] in tokenizer.stop_token_ids
        jsonschema.validate(json.loads(tokenizer.decode(tokens[:-1])), CITY_SCHEMA)
