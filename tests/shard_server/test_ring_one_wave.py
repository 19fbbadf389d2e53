"""One wave round the ring (STRATA_RING_WAVES=1, as `strata run` sets for shards sharing a host): exact,
and the running requests stay in one batch per step.

Three shard servers run as separate processes, as `strata run` starts them on one host: one wave, all
BLAS threads for every batch (one shard computes at a time). Concurrent seeded requests, whose prompts
wait for the wave in flight and then join it, each give their solo mlx-lm tokens over 2 and 3 shards.
"""

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.kernel.ids import ModelId
from services.kernel.settings import models_root
from services.models.model_store import ModelStore
from shard_server.batch_plan import RING_WAVES_VARIABLE
from shard_server.blas_threads import SHARED_THREADS_VARIABLE
from tests.processes import ServiceProcess, start_lone_shards
from tests.ring_client import assign_ring, generate_tokens, reference_tokens, shard_stats
from tests.tiny_architectures import NUM_LAYERS, build_tiny_model

PREFILL_STEP_SIZE = 4
PROMPTS = [[3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12], [3, 17, 101, 5, 9], [101, 5, 9, 250, 42, 7, 77], [1, 2, 3]]
SEEDS = [11, 22, 33, 44]
NEW_TOKENS = 24

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("tiny-home")
    build_tiny_model("llama", ModelStore(models_root(home)).model_dir(ModelId("tiny-llama")))
    return home


@pytest.fixture(scope="module")
def shard_addresses(tiny_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("shard-logs")
    shards: list[ServiceProcess] = []
    try:
        with pytest.MonkeyPatch.context() as environment:
            environment.setenv(RING_WAVES_VARIABLE, "1")
            environment.setenv(SHARED_THREADS_VARIABLE, str(len(os.sched_getaffinity(0))))
            environment.setenv("OPENBLAS_THREAD_TIMEOUT", "8")
            addresses = start_lone_shards(shards, 3, tiny_home, logs)
        yield addresses
    finally:
        exit_codes = [shard.stop() for shard in shards]
    assert exit_codes == [0] * len(shards), f"shard exit codes after SIGTERM: {exit_codes}"


@pytest.mark.parametrize(("shard_count", "term"), [(2, 2), (3, 3)])
def test_concurrent_seeded_requests_in_one_wave_each_match_their_solo_run(
    tiny_home: Path, shard_addresses: list[str], shard_count: int, term: int
) -> None:
    instance_id = assign_ring(shard_addresses[:shard_count], "tiny-llama", NUM_LAYERS, term, PREFILL_STEP_SIZE)
    model_dir = models_root(tiny_home) / "tiny-llama"
    before = shard_stats(shard_addresses[0])
    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        futures = [
            pool.submit(generate_tokens, shard_addresses[0], instance_id, prompt, NEW_TOKENS, 1.0, 1.0, seed)
            for prompt, seed in zip(PROMPTS, SEEDS, strict=True)
        ]
        results = [future.result()[0] for future in futures]
    for prompt, seed, tokens in zip(PROMPTS, SEEDS, results, strict=True):
        assert tokens == reference_tokens(model_dir, prompt, NEW_TOKENS, PREFILL_STEP_SIZE, 1.0, 1.0, seed=seed)
    after = shard_stats(shard_addresses[0])
    # One wave: every running request's row is in each step's batch, so the steps are about one
    # request's (its prompt chunks, then a token each), not one per wave per shard (which would be
    # `shard_count` times as many).
    steps = after.steps - before.steps
    assert steps < 1.5 * NEW_TOKENS, f"{steps} steps for {len(PROMPTS)} requests of {NEW_TOKENS} tokens"
    assert after.batched_rows - before.batched_rows > 3 * steps
    assert all(shard_stats(address).active_requests == 0 for address in shard_addresses)
