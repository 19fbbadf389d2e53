"""Single-process mlx-lm on the same weights, compute dtype and BLAS: the figures strata is held to."""

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import batch_generate, generate_step

from gateway.tokenization import ModelTokenizer
from services.benchmark.load_client import prompt_for
from services.compute_dtype import ComputeDtype, convert_module


@dataclass(frozen=True)
class BaselineFigures:
    single_stream_tokens_per_second: float
    batch_tokens_per_second: dict[int, float]
    """Aggregate decode tok/s of `batch_generate` with that many rows."""
    runs: tuple["BaselineFigures", ...] = ()
    """When these figures are a mean: the runs it was taken over, in order."""


def averaged(runs: Sequence[BaselineFigures]) -> BaselineFigures:
    """The mean of runs made at different times of one benchmark (a shared machine's speed drifts)."""
    rows = [
        row
        for row in sorted(runs[0].batch_tokens_per_second)
        if all(row in run.batch_tokens_per_second for run in runs)
    ]
    return BaselineFigures(
        statistics.fmean(run.single_stream_tokens_per_second for run in runs),
        {row: statistics.fmean(run.batch_tokens_per_second[row] for run in runs) for row in rows},
        tuple(runs),
    )


def measure_baselines(
    model_dir: Path, compute_dtype: ComputeDtype, max_tokens: int, batch_sizes: tuple[int, ...], prefill_step_size: int
) -> BaselineFigures:
    model, wrapped_tokenizer = load(str(model_dir))
    model = convert_module(model, compute_dtype)
    tokenizer = ModelTokenizer.from_directory(model_dir)
    prompt = tokenizer.encode_text(prompt_for(0))
    # One stream: decode rate from the first token to the last (prefill excluded), as the cluster's.
    times: list[float] = []
    for _ in generate_step(mx.array(prompt), model, max_tokens=max_tokens, prefill_step_size=prefill_step_size):
        times.append(time.perf_counter())
    single = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    batches: dict[int, float] = {}
    for rows in batch_sizes:
        prompts = [tokenizer.encode_text(prompt_for(index)) for index in range(rows)]
        response = batch_generate(model, wrapped_tokenizer, prompts, max_tokens=max_tokens)
        batches[rows] = response.stats.generation_tps
    return BaselineFigures(single, batches)
