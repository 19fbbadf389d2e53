"""Recovery replay with logits processors over real shard processes: a request sent again with the
tokens it had already generated (`replay_tokens`) continues exactly as the undisturbed run, with
penalties (whose history is rebuilt by sampling the replayed steps again) and with logprobs.

Two shard servers, one tiny llama split over them; small prefill steps so the prompt crosses chunks.
"""

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.sampling import SamplingOptions
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.platform.grpc_server import cluster_sync_channel
from services.wire.generate_call import sampling_to_pb
from strata_wire import shard_pb2, shard_pb2_grpc
from tests.processes import ServiceProcess, start_lone_shards
from tests.ring_client import assign_ring, shard_stats
from tests.sampling_reference import SampledStep, reference_steps
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(300)]

MODEL = "tiny-llama"
PREFILL_STEP_SIZE = 4
PROMPT = [3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12]
NEW_TOKENS = 24
OPTIONS = {
    "greedy with every penalty and logprobs": SamplingOptions(
        repetition_penalty=1.4,
        repetition_context_size=6,
        presence_penalty=1.0,
        frequency_penalty=0.6,
        logit_bias=((5, 20.0),),  # 5 wins until the penalties of its repeats outweigh it
        logprobs=True,
        top_logprobs=3,
    ),
    "seeded with penalties and min_p": SamplingOptions(
        temperature=0.9, seed=31, min_p=0.05, repetition_penalty=1.2, frequency_penalty=0.5
    ),
}


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("sampling-replay-home")
    build_tiny_model("llama", ModelStore(models_root(home)).model_dir(ModelId(MODEL)))
    return home


@pytest.fixture(scope="module")
def ring(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], str]]:
    shards: list[ServiceProcess] = []
    try:
        addresses = start_lone_shards(shards, 2, model_home, tmp_path_factory.mktemp("sampling-replay-logs"))
        yield addresses, assign_ring(addresses, MODEL, NUM_LAYERS, 1, PREFILL_STEP_SIZE)
    finally:
        for shard in shards:
            shard.stop()


def run(address: str, instance_id: str, options: SamplingOptions, replay: Sequence[int]) -> list[SampledStep]:
    """The reported steps of one request that resumes after `replay` (already generated tokens)."""
    with cluster_sync_channel(address) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(
            shard_pb2.GenerateRequest(
                request_id=f"replay-{uuid.uuid4().hex[:8]}",
                instance_id=instance_id,
                prompt_tokens=PROMPT,
                max_tokens=NEW_TOKENS,
                sampling=sampling_to_pb(options),
                replay_tokens=list(replay),
            ),
            timeout=120,
        )
        return [
            SampledStep(
                reply.token.token_id,
                reply.token.logprob if reply.token.HasField("logprob") else None,
                tuple((entry.token_id, entry.logprob) for entry in reply.token.top_logprobs),
            )
            for reply in replies
            if reply.HasField("token")
        ]


@pytest.mark.parametrize("name", OPTIONS)
def test_a_replayed_request_with_penalties_continues_exactly(
    model_home: Path, ring: tuple[list[str], str], name: str
) -> None:
    addresses, instance_id = ring
    options = OPTIONS[name]
    expected = reference_steps(models_root(model_home) / MODEL, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE, options)
    plain = reference_steps(
        models_root(model_home) / MODEL,
        PROMPT,
        NEW_TOKENS,
        PREFILL_STEP_SIZE,
        SamplingOptions(temperature=options.temperature, seed=options.seed),
    )
    assert [step.token_id for step in expected] != [step.token_id for step in plain]  # the penalties bite
    if options.logit_bias:  # the biased token leads until its penalties, counted over the history, push it out
        tokens = [step.token_id for step in expected]
        assert tokens[0] == 5 and set(tokens) != {5}

    assert run(addresses[0], instance_id, options, []) == expected
    before = shard_stats(addresses[0])
    for replayed in (1, 9, NEW_TOKENS - 1):
        journal = [step.token_id for step in expected[:replayed]]
        assert run(addresses[0], instance_id, options, journal) == expected[replayed:]
    after = shard_stats(addresses[0])
    assert after.replay_divergences == before.replay_divergences
