"""Exactness over real shard-server processes: N shards give the tokens of plain mlx-lm in one process.

Three shard servers run as separate processes for the whole module; each case re-assigns layers
with the real Assign RPC (a newer term each time), so 1, 2 and 3-shard rings reuse the processes.
The prefill step is small so that prompts cross several chunks.
"""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from services.platform.grpc_server import cluster_sync_channel
from shard_server.native_attention import load_native_attention
from strata_wire import shard_pb2, shard_pb2_grpc
from tests.processes import ServiceProcess, start_lone_shards
from tests.ring_client import assign_ring, generate_tokens, reference_tokens, shard_stats
from tests.tiny_architectures import ARCHITECTURE_CONFIGS, NUM_LAYERS, build_tiny_model

PREFILL_STEP_SIZE = 4
PROMPT = [3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12]  # 11 tokens: chunks of 4, 4, 2, then 1
NEW_TOKENS = 32

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]


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
    shards: list[ServiceProcess] = []
    try:
        with pytest.MonkeyPatch.context() as environment:
            # As `strata run` starts shards sharing a host: all threads for a lone request, one each
            # while requests pipeline, so the exactness checks below also cover the switch.
            environment.setenv("STRATA_BLAS_THREADS_SHARED", "1")
            environment.setenv("OPENBLAS_THREAD_TIMEOUT", "8")
            addresses = start_lone_shards(shards, 3, tiny_home, logs)
        yield addresses
    finally:
        # Every shard ran models (MLX, native attention, BLAS threads): each still exits 0 on SIGTERM.
        exit_codes = [shard.stop() for shard in shards]
    assert exit_codes == [0] * len(shards), f"shard exit codes after SIGTERM: {exit_codes}"


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


def _check_concurrent_runs(
    model_dir: Path,
    address: str,
    instance_id: str,
    prompts: list[list[int]],
    seeds: list[int],
    new_tokens: int,
    temperature: float,
) -> None:
    """Starts every prompt at once (seeded sampling); each must give its solo mlx-lm tokens."""
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        futures = [
            pool.submit(generate_tokens, address, instance_id, prompt, new_tokens, temperature, 1.0, seed)
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        results = [future.result()[0] for future in futures]
    for prompt, seed, tokens in zip(prompts, seeds, results, strict=True):
        expected = reference_tokens(model_dir, prompt, new_tokens, PREFILL_STEP_SIZE, temperature, 1.0, seed=seed)
        assert tokens == expected


def test_concurrent_seeded_requests_each_match_their_solo_run(tiny_home: Path, shard_addresses: list[str]) -> None:
    instance_id = _assign(shard_addresses, "llama", 3)
    model_dir = models_root(tiny_home) / "tiny-llama"
    prompts = [PROMPT, PROMPT[:5], PROMPT[2:], [1, 2, 3]]
    _check_concurrent_runs(model_dir, shard_addresses[0], instance_id, prompts, [11, 22, 33, 44], NEW_TOKENS, 1.0)
    for address in shard_addresses:
        stats = shard_stats(address)
        assert stats.batch_invariant
        # Float32 stages run a batch's attention natively wherever the library is built and loads.
        assert stats.native_attention == (load_native_attention() is not None)
        assert stats.batched_rows > stats.steps  # requests really shared batches
        assert stats.active_requests == 0
        assert stats.kv_cache_bytes == 0
    # The first shard measured each ring step's transport share: positive, and less than the step.
    first = shard_stats(shard_addresses[0])
    mean_ring_step = first.ring_seconds / first.ring_samples
    assert 0 < first.hop_overhead_p50_seconds <= first.hop_overhead_p99_seconds
    assert first.hop_overhead_p50_seconds * 3 < mean_ring_step


@pytest.mark.parametrize("shard_count", [1, 3])
def test_a_burst_of_short_prompts_prefilled_in_shared_batches_matches_each_solo_run(
    tiny_home: Path, shard_addresses: list[str], shard_count: int
) -> None:
    # Eight prompts of 2-4 tokens arrive at once: their chunks (1-3 rows, then the sampled token)
    # share batches within the prefill step's row budget, beside the decode rows of earlier ones.
    instance_id = _assign(shard_addresses, "qwen2", shard_count)
    model_dir = models_root(tiny_home) / "tiny-qwen2"
    prompts = [PROMPT[index : index + 2 + index % 3] for index in range(8)]
    before = shard_stats(shard_addresses[0])
    _check_concurrent_runs(model_dir, shard_addresses[0], instance_id, prompts, list(range(100, 108)), 12, 0.9)
    after = shard_stats(shard_addresses[0])
    assert after.batched_rows - before.batched_rows > after.steps - before.steps


@pytest.mark.parametrize("shard_count", [1, 3])
def test_a_request_sharing_a_stored_prompt_prefix_reuses_it_exactly(
    tiny_home: Path, shard_addresses: list[str], shard_count: int
) -> None:
    instance_id = _assign(shard_addresses, "qwen3", shard_count)
    model_dir = models_root(tiny_home) / "tiny-qwen3"
    first_turn = [*PROMPT, 44, 45, 46]  # 14 tokens: chunks end at 4, 8 and 12, which are stored
    generate_tokens(shard_addresses[0], instance_id, first_turn, 4)
    next_turn = [*first_turn[:12], 200, 201, 202, 203, 204]  # shares the first 12 tokens
    before = shard_stats(shard_addresses[0])
    greedy, _ = generate_tokens(shard_addresses[0], instance_id, next_turn, NEW_TOKENS)
    seeded, _ = generate_tokens(shard_addresses[0], instance_id, next_turn, NEW_TOKENS, 0.9, 0.9, seed=5)
    after = shard_stats(shard_addresses[0])
    assert after.prefix_hits - before.prefix_hits == 2
    # The first run reuses 12 tokens and stores its own chunk ending at 16, which the second reuses.
    assert after.reused_prompt_tokens - before.reused_prompt_tokens == 12 + 16
    assert greedy == reference_tokens(model_dir, next_turn, NEW_TOKENS, PREFILL_STEP_SIZE)
    assert seeded == reference_tokens(model_dir, next_turn, NEW_TOKENS, PREFILL_STEP_SIZE, 0.9, 0.9, seed=5)
    assert all(shard_stats(address).prefix_cache_bytes > 0 for address in shard_addresses[:shard_count])


def test_a_cancelled_request_frees_its_kv_cache_on_every_shard(shard_addresses: list[str]) -> None:
    instance_id = _assign(shard_addresses, "llama", 3)
    with cluster_sync_channel(shard_addresses[0]) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(
            shard_pb2.GenerateRequest(
                request_id="to-cancel", instance_id=instance_id, prompt_tokens=PROMPT, max_tokens=400
            ),
            timeout=120,
        )
        for received, _ in enumerate(replies):
            if received == 3:
                break
        replies.cancel()
    deadline = time.monotonic() + 30
    stats = [shard_stats(address) for address in shard_addresses]
    while time.monotonic() < deadline and any(stat.active_requests or stat.kv_cache_bytes for stat in stats):
        time.sleep(0.1)
        stats = [shard_stats(address) for address in shard_addresses]
    assert [(stat.active_requests, stat.kv_cache_bytes) for stat in stats] == [(0, 0)] * 3


def test_stop_token_ends_the_request_with_reason_stop(tiny_home: Path, shard_addresses: list[str]) -> None:
    instance_id = _assign(shard_addresses, "qwen2", 2)
    model_dir = models_root(tiny_home) / "tiny-qwen2"
    expected = reference_tokens(model_dir, PROMPT, NEW_TOKENS, PREFILL_STEP_SIZE)
    stop_token = expected[5]
    tokens, reason = generate_tokens(shard_addresses[0], instance_id, PROMPT, NEW_TOKENS, stop_token_ids=[stop_token])
    assert reason == "stop"
    assert tokens == expected[: expected.index(stop_token) + 1]
