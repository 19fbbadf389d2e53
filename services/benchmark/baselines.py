"""Single-process mlx-lm on the same weights, compute dtype and BLAS: the figures strata is held to."""

import time
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
