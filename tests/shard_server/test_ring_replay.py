"""Recovery replay over real shard-server processes: a request sent again with the tokens it had
already generated (`replay_tokens`) continues exactly where the original run was, greedy and seeded,
and the replayed tokens are not reported a second time.

Three shard servers, one tiny llama split over them; the prefill step is small so the prompt crosses
several chunks (the replay must prefill it in the same chunks as the original).
"""

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import common_pb2, shard_pb2, shard_pb2_grpc
from tests.processes import ServiceProcess, start_lone_shards
from tests.ring_client import assign_ring, reference_tokens, shard_stats
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model

MODEL = "tiny-llama"
PREFILL_STEP_SIZE = 4
PROMPT = [3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12]  # 11 tokens: chunks of 4, 4, 2, then 1
NEW_TOKENS = 24

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("replay-home")
    build_tiny_model("llama", ModelStore(models_root(home)).model_dir(ModelId(MODEL)))
    return home


@pytest.fixture(scope="module")
def ring(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], str]]:
    """Three shard servers holding the model in ring order; yields their addresses and the instance id."""
    logs = tmp_path_factory.mktemp("replay-logs")
    shards: list[ServiceProcess] = []
    try:
        addresses = start_lone_shards(shards, 3, model_home, logs)
        yield addresses, assign_ring(addresses, MODEL, NUM_LAYERS, 1, PREFILL_STEP_SIZE)
    finally:
        for shard in shards:
            shard.stop()


def generate_replies(
    first_address: str,
    instance_id: str,
    max_tokens: int,
    replay_tokens: Sequence[int],
    temperature: float = 0.0,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
) -> tuple[list[tuple[int, int]], str]:
    """(index, token id) of every reported token, and the finish reason."""
    with cluster_sync_channel(first_address) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(
            shard_pb2.GenerateRequest(
                request_id=f"replay-{uuid.uuid4().hex[:8]}",
                instance_id=instance_id,
                prompt_tokens=PROMPT,
                max_tokens=max_tokens,
                stop_token_ids=list(stop_token_ids),
                sampling=common_pb2.SamplingParams(temperature=temperature, top_p=0.95, seed=seed),
                replay_tokens=list(replay_tokens),
            ),
            timeout=120,
        )
        tokens: list[tuple[int, int]] = []
        reason = ""
        for reply in replies:
            if reply.HasField("token"):
                tokens.append((reply.token.index, reply.token.token_id))
            else:
                reason = reply.finished.reason
                assert reply.finished.generated_tokens == len(tokens) + len(replay_tokens)
        return tokens, reason


@pytest.mark.parametrize("replayed", [1, 9, NEW_TOKENS - 1])
@pytest.mark.parametrize(("temperature", "seed"), [(0.0, 0), (0.9, 4321)])
def test_a_replayed_request_continues_exactly_where_the_original_was(
    model_home: Path, ring: tuple[list[str], str], replayed: int, temperature: float, seed: int
) -> None:
    addresses, instance_id = ring
    expected = reference_tokens(
        models_root(model_home) / MODEL, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE, temperature, 0.95, seed
    )
    before = shard_stats(addresses[0])
    tokens, reason = generate_replies(addresses[0], instance_id, NEW_TOKENS, expected[:replayed], temperature, seed)
    after = shard_stats(addresses[0])
    assert reason == "length"
    assert tokens == list(enumerate(expected))[replayed:]  # only the new tokens, with their true indices
    assert after.replayed_tokens - before.replayed_tokens == replayed
    assert after.replay_divergences == before.replay_divergences


def test_a_replay_that_already_reached_max_tokens_only_finishes(ring: tuple[list[str], str], model_home: Path) -> None:
    addresses, instance_id = ring
    expected = reference_tokens(models_root(model_home) / MODEL, PROMPT, 6, PREFILL_STEP_SIZE)
    tokens, reason = generate_replies(addresses[0], instance_id, 6, expected)
    assert (tokens, reason) == ([], "length")


def test_stop_tokens_count_after_the_replay(ring: tuple[list[str], str], model_home: Path) -> None:
    addresses, instance_id = ring
    expected = reference_tokens(models_root(model_home) / MODEL, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)
    stop_token = expected[12]
    end = expected.index(stop_token) + 1
    replayed = min(4, end - 1)
    tokens, reason = generate_replies(
        addresses[0], instance_id, NEW_TOKENS, expected[:replayed], stop_token_ids=[stop_token]
    )
    assert reason == "stop"
    assert [token for _, token in tokens] == expected[replayed:end]


def test_a_journal_that_differs_from_the_computation_is_counted_and_followed(
    ring: tuple[list[str], str], model_home: Path
) -> None:
    addresses, instance_id = ring
    expected = reference_tokens(models_root(model_home) / MODEL, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)
    forged = [expected[0], (expected[1] + 1) % 256]
    before = shard_stats(addresses[0])
    tokens, _ = generate_replies(addresses[0], instance_id, 4, forged)
    after = shard_stats(addresses[0])
    assert after.replay_divergences - before.replay_divergences == 1
    assert [index for index, _ in tokens] == [2, 3]
