"""Every family, split into 1, 2 and 3 chained stages in one process, gives plain mlx-lm's tokens.

Each case is a tiny random-weight model built with mlx-lm's own classes (`tests.tiny_families`).
Its stages run a greedy and a seeded request batched with two other seeded requests, as a ring's
shards batch them (prompt chunks and decode rows of all requests in one step, the sampled rows'
logits together); every request must get, token for token, what mlx-lm's `generate_step` gives it
alone in one process. Prompts and generations are longer than the sliding windows, so rotating
caches wrap. Each case prints whether its batches mixed requests, per layer kind, or fell back.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import pytest

from services.kernel.ids import ModelId
from services.kernel.sampling import SamplingOptions
from services.models.model_store import ModelStore
from shard_server.batched_forward import RequestRows
from shard_server.batching_check import describe_signature, layer_signature
from shard_server.layer_kinds import StageCache
from shard_server.model_stage import ModelStage, StageRange
from shard_server.prefill import prefill_chunks
from shard_server.sampler import RequestSampler, sample_rows
from tests.ring_client import even_split, reference_tokens
from tests.tiny_families import FAMILY_CONFIGS, NUM_LAYERS, build_family_model

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

PREFILL_STEP_SIZE = 4
PROMPT = [3, 17, 101, 5, 9, 250, 42, 7, 77, 301, 12]  # 11 tokens: chunks of 4, 4, 2, then 1
OTHER_PROMPTS = [[8, 9, 10], [400, 401, 402, 403, 404, 405, 406]]
NEW_TOKENS = 12
MAX_ROWS = PREFILL_STEP_SIZE + 8


@pytest.fixture(scope="module")
def family_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("models"))
    for case in FAMILY_CONFIGS:
        build_family_model(case, store.model_dir(ModelId(f"tiny-{case}")))
    return store


@dataclass
class _Request:
    prompt: list[int]
    sampler: RequestSampler
    caches: list[list[StageCache]]
    chunks: list[tuple[int, int]]
    generated: list[int] = field(default_factory=lambda: [])
    next_chunk: int = 0


def _run_together(
    stages: Sequence[ModelStage],
    requests: Sequence[tuple[list[int], SamplingOptions]],
    prefill_step_size: int = PREFILL_STEP_SIZE,
) -> list[list[int]]:
    """Every request in the same steps, as a ring runs them: one row per decode, prompt chunks beside."""
    running = [
        _Request(
            prompt,
            RequestSampler(options),
            [stage.make_cache() for stage in stages],
            prefill_chunks(len(prompt), prefill_step_size),
        )
        for prompt, options in requests
    ]
    while active := [request for request in running if len(request.generated) < NEW_TOKENS]:
        tokens: list[int] = []
        segments: list[tuple[_Request, int, int, bool]] = []
        for request in active:
            if request.next_chunk < len(request.chunks):
                start, end = request.chunks[request.next_chunk]
                request.next_chunk += 1
                piece, samples = request.prompt[start:end], request.next_chunk == len(request.chunks)
            else:
                piece, samples = [request.generated[-1]], True
            segments.append((request, len(tokens), len(piece), samples))
            tokens.extend(piece)
        hidden = stages[0].embed(mx.array(tokens)[None])
        for index, stage in enumerate(stages):
            rows = [RequestRows(request.caches[index], start, length) for request, start, length, _ in segments]
            hidden = stage.run_layers(hidden, rows)
        sampled = [(request, start + length - 1) for request, start, length, samples in segments if samples]
        if not sampled:
            continue
        logits = stages[-1].logits(mx.take(hidden, mx.array([row for _, row in sampled]), axis=1))
        for (request, _), token in zip(
            sampled, sample_rows([request.sampler for request, _ in sampled], logits), strict=True
        ):
            request.generated.append(token.token_id)
    return [request.generated for request in running]


def _batching_report(stages: Sequence[ModelStage]) -> str:
    """Per layer kind of the model: whether rows of different requests shared its batches."""
    modes: dict[str, set[str]] = {}
    for stage in stages:
        for block, plan in zip(stage.layers, stage.layer_plans, strict=True):
            mode = "fell back (each request alone)"
            if plan.batched:
                mode = "mixed requests" + (f" in batches of up to {plan.max_rows} rows" if plan.max_rows else "")
            modes.setdefault(describe_signature(layer_signature(block, plan.kind)), set()).add(mode)
    return "; ".join(f"{name}: {' / '.join(sorted(mode))}" for name, mode in modes.items())


@pytest.mark.parametrize("case", sorted(FAMILY_CONFIGS))
def test_split_stages_batched_with_other_requests_equal_plain_mlx_lm(
    family_store: ModelStore, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = family_store.model_dir(ModelId(f"tiny-{case}"))
    requests = [
        (PROMPT, SamplingOptions()),
        (PROMPT, SamplingOptions(temperature=0.8, top_p=0.95, seed=1234)),
        *[(prompt, SamplingOptions(temperature=1.0, seed=index)) for index, prompt in enumerate(OTHER_PROMPTS)],
    ]
    expected = [
        reference_tokens(
            model_dir, prompt, NEW_TOKENS, PREFILL_STEP_SIZE, options.temperature, options.top_p, options.seed
        )
        for prompt, options in requests
    ]
    assert len(set(expected[0])) > 1, "greedy output should not be one repeated token"
    assert expected[1] != expected[0]  # the seeded run really sampled
    reports: dict[str, list[int]] = {}
    for count in (1, 2, 3):
        stages = [
            ModelStage(model_dir, StageRange(start, end, NUM_LAYERS)) for start, end in even_split(NUM_LAYERS, count)
        ]
        for stage in stages:
            stage.check_batching(MAX_ROWS)
        assert _run_together(stages, requests) == expected, f"{count} stages"
        reports.setdefault(_batching_report(stages), []).append(count)
    with capsys.disabled():
        for report, counts in reports.items():
            print(f"\n{case} over {'/'.join(map(str, counts))} stages: {report}")


SORTING_STEP_SIZE = 24
"""Three prompt chunks of 24 rows share a batch: 144 routed indices at 2 experts a token, past the 64
from which SwitchGLU sorts its rows, while each chunk alone (48) and each decode row stay below."""


def test_moe_batches_past_switchglus_sorting_threshold_equal_plain_mlx_lm(
    family_store: ModelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = family_store.model_dir(ModelId("tiny-qwen3_moe"))
    prompts = [[(index * 37 + offset * 11) % 500 + 1 for offset in range(49)] for index in range(3)]
    requests = [
        (prompts[0], SamplingOptions()),
        (prompts[1], SamplingOptions(temperature=0.9, seed=5)),
        (prompts[2], SamplingOptions(temperature=1.0, top_p=0.9, seed=6)),
    ]
    expected = [
        reference_tokens(
            model_dir, prompt, NEW_TOKENS, SORTING_STEP_SIZE, options.temperature, options.top_p, options.seed
        )
        for prompt, options in requests
    ]
    for count in (1, 2):
        stages = [
            ModelStage(model_dir, StageRange(start, end, NUM_LAYERS)) for start, end in even_split(NUM_LAYERS, count)
        ]
        for stage in stages:
            # As a shard checks: its prefill step and the decode rows beside it, so the check's batch sorts too.
            stage.check_batching(SORTING_STEP_SIZE + 64)
        assert _run_together(stages, requests, SORTING_STEP_SIZE) == expected, f"{count} stages"
        # Where larger batches change the experts' bits, only batches below the sorting threshold mix.
        capped = [plan.max_rows for stage in stages for plan in stage.layer_plans if plan.max_rows is not None]
        assert all(rows * 2 < 64 for rows in capped)
        with capsys.disabled():
            print(f"\nqwen3_moe, 72-row batches over {count} stages: {_batching_report(stages)}")
