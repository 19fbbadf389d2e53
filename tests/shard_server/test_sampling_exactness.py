"""Sampling options over real shard processes on the embedded SmolLM2: each request's tokens and
logprobs are bitwise those of plain mlx-lm's `generate_step` with the same `logits_processors` and
`make_sampler`, over 1 and 2 shards, while the requests share batches with each other and with
plain greedy rows (which take the batched fast path beside them).
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.tokenization import ModelTokenizer
from services.kernel.compute_dtype import default_compute_dtype
from services.kernel.sampling import SamplingOptions
from services.models.embedded_model import EMBEDDED_MODEL_ID
from services.models.model_config import read_model_config
from tests.processes import ServiceProcess, start_lone_shards
from tests.ring_client import assign_ring, shard_stats
from tests.sampling_reference import SampledStep, reference_steps, ring_steps

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(900)]

PREFILL_STEP_SIZE = 16
NEW_TOKENS = 20
COMPUTE_DTYPE = default_compute_dtype()
TEXT = "The cat sat on the mat. The cat sat on the mat. The dog sat on the log, and the cat"

OPTIONS = {
    "greedy, logit bias, top 5 logprobs": SamplingOptions(
        logit_bias=((28, 4.0), (260, -100.0), (253, 2.5)), logprobs=True, top_logprobs=5
    ),
    "greedy, all three penalties, top 3 logprobs": SamplingOptions(
        repetition_penalty=1.3, presence_penalty=0.7, frequency_penalty=0.5, logprobs=True, top_logprobs=3
    ),
    "seeded, min_p, top_k, penalties, logprobs": SamplingOptions(
        temperature=0.9, min_p=0.05, top_k=40, seed=77, repetition_penalty=1.1, frequency_penalty=0.4, logprobs=True
    ),
    "seeded, top_p, presence": SamplingOptions(temperature=0.8, top_p=0.9, seed=5, presence_penalty=1.0),
    "greedy, plain": SamplingOptions(),
    "greedy, logprobs only": SamplingOptions(logprobs=True, top_logprobs=20),
}


@pytest.fixture(scope="module")
def model_dir(embedded_models: Path) -> Path:
    return embedded_models / EMBEDDED_MODEL_ID


@pytest.fixture(scope="module")
def prompt(model_dir: Path) -> list[int]:
    return ModelTokenizer.from_directory(model_dir).encode_text(TEXT)


@pytest.fixture(scope="module")
def shard_addresses(embedded_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    shards: list[ServiceProcess] = []
    try:
        yield start_lone_shards(shards, 2, embedded_home, tmp_path_factory.mktemp("sampling-logs"))
    finally:
        for shard in shards:
            shard.stop()


@pytest.fixture(scope="module")
def references(model_dir: Path, prompt: list[int]) -> dict[str, list[SampledStep]]:
    return {
        name: reference_steps(model_dir, prompt, NEW_TOKENS, PREFILL_STEP_SIZE, options, COMPUTE_DTYPE)
        for name, options in OPTIONS.items()
    }


def test_the_options_change_what_is_generated(references: dict[str, list[SampledStep]]) -> None:
    # Guards the comparisons below: each set of processors really changes the greedy tokens.
    plain = [step.token_id for step in references["greedy, plain"]]
    for name in ("greedy, logit bias, top 5 logprobs", "greedy, all three penalties, top 3 logprobs"):
        assert [step.token_id for step in references[name]] != plain, name
    assert [step.token_id for step in references["greedy, logprobs only"]] == plain


@pytest.mark.parametrize("shard_count", [1, 2])
def test_options_and_logprobs_equal_mlx_lm_while_batched(
    model_dir: Path,
    prompt: list[int],
    shard_addresses: list[str],
    references: dict[str, list[SampledStep]],
    shard_count: int,
) -> None:
    num_layers = read_model_config(model_dir).num_layers
    instance_id = assign_ring(
        shard_addresses[:shard_count], EMBEDDED_MODEL_ID, num_layers, shard_count, PREFILL_STEP_SIZE, COMPUTE_DTYPE
    )
    before = shard_stats(shard_addresses[0])
    with ThreadPoolExecutor(max_workers=len(OPTIONS)) as pool:
        futures = {
            name: pool.submit(ring_steps, shard_addresses[0], instance_id, prompt, NEW_TOKENS, options)
            for name, options in OPTIONS.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    after = shard_stats(shard_addresses[0])

    for name, steps in results.items():
        assert steps == references[name], name
    assert after.batched_rows - before.batched_rows > after.steps - before.steps  # rows shared batches
