"""Exactness over real shard-server processes: N shards give the tokens of plain mlx-lm in one process.

Three shard servers run as separate processes for the whole module; each case re-assigns layers
with the real Assign RPC (a newer term each time), so 1, 2 and 3-shard rings reuse the processes.
The prefill step is small so that prompts cross several chunks.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.ids import ModelId
from services.model_store import ModelStore
from services.settings import models_root
from tests.processes import ServiceProcess, free_port, start_strata, wait_for_grpc_health
from tests.ring_client import assign_ring, generate_tokens, reference_tokens
from tests.tiny_architectures import ARCHITECTURE_CONFIGS, NUM_LAYERS, build_tiny_model

PREFILL_STEP_SIZE = 4
PROMPT = [3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12]  # 11 tokens: chunks of 4, 4, 2, then 1
NEW_TOKENS = 32

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("tiny-home")
    store = ModelStore(models_root(home))
    for model_type in ARCHITECTURE_CONFIGS:
        build_tiny_model(model_type, store.model_dir(ModelId(f"tiny-{model_type}")))
    return home


@pytest.fixture(scope="module")
def shard_addresses(tiny_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("shard-logs")
    unused_coordinator = f"127.0.0.1:{free_port()}"
    shards: list[ServiceProcess] = []
    addresses: list[str] = []
    try:
        for index in range(3):
            port = free_port()
            arguments = ["shard", "--port", str(port), "--coordinator", unused_coordinator]
            shards.append(start_strata(f"shard-{index}", arguments, tiny_home, logs))
            addresses.append(f"127.0.0.1:{port}")
        for shard, address in zip(shards, addresses, strict=True):
            wait_for_grpc_health(shard, address)
        yield addresses
    finally:
        for shard in shards:
            shard.stop()


class _Terms:
    next_term = 1


def _assign(addresses: list[str], model_type: str, shard_count: int) -> str:
    _Terms.next_term += 1
    return assign_ring(addresses[:shard_count], f"tiny-{model_type}", NUM_LAYERS, _Terms.next_term, PREFILL_STEP_SIZE)


@pytest.mark.parametrize("shard_count", [1, 2, 3])
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURE_CONFIGS))
def test_greedy_and_seeded_output_equal_single_process_mlx_lm(
    tiny_home: Path, shard_addresses: list[str], model_type: str, shard_count: int
) -> None:
    instance_id = _assign(shard_addresses, model_type, shard_count)
    model_dir = models_root(tiny_home) / f"tiny-{model_type}"

    greedy, reason = generate_tokens(shard_addresses[0], instance_id, PROMPT, NEW_TOKENS)
    assert reason == "length"
    assert greedy == reference_tokens(model_dir, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)

    seeded, _ = generate_tokens(shard_addresses[0], instance_id, PROMPT, NEW_TOKENS, 0.8, 0.95, seed=1234)
    assert seeded == reference_tokens(model_dir, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE, 0.8, 0.95, seed=1234)
    assert seeded != greedy  # the seeded run really sampled


def test_concurrent_seeded_requests_each_match_their_solo_run(tiny_home: Path, shard_addresses: list[str]) -> None:
    instance_id = _assign(shard_addresses, "llama", 3)
    model_dir = models_root(tiny_home) / "tiny-llama"
    seeds = [11, 22, 33, 44]
    prompts = [PROMPT, PROMPT[:5], PROMPT[2:], [1, 2, 3]]
    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        futures = [
            pool.submit(generate_tokens, shard_addresses[0], instance_id, prompt, NEW_TOKENS, 1.0, 1.0, seed)
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        results = [future.result()[0] for future in futures]
    for prompt, seed, tokens in zip(prompts, seeds, results, strict=True):
        assert tokens == reference_tokens(model_dir, prompt, NEW_TOKENS, PREFILL_STEP_SIZE, 1.0, 1.0, seed=seed)


def test_stop_token_ends_the_request_with_reason_stop(tiny_home: Path, shard_addresses: list[str]) -> None:
    instance_id = _assign(shard_addresses, "qwen2", 2)
    model_dir = models_root(tiny_home) / "tiny-qwen2"
    expected = reference_tokens(model_dir, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)
    stop_token = expected[5]
    tokens, reason = generate_tokens(shard_addresses[0], instance_id, PROMPT, NEW_TOKENS, stop_token_ids=[stop_token])
    assert reason == "stop"
    assert tokens == expected[: expected.index(stop_token) + 1]
