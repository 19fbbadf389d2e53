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
from services.app.benchmark.load_client import prompt_for
from services.kernel.compute_dtype import ComputeDtype
from services.platform.compute_device import detect_compute_device
from services.platform.mlx_compute import convert_module


@dataclass(frozen=True)
class BaselineFigures:
    single_stream_tokens_per_second: float
    batch_tokens_per_second: dict[int, float]
    """Aggregate decode tok/s of `batch_generate` with that many rows: its `generation_tps`, prefill excluded."""
    batch_end_to_end_tokens_per_second: dict[int, float]
    """The same call's generated tokens over its whole wall time, prefill included: the definition of
    a cluster's output throughput (vLLM's), which counts each request's prefill in the duration."""
    runs: tuple["BaselineFigures", ...] = ()
    """When these figures are a mean: the runs it was taken over, in order."""


def averaged(runs: Sequence[BaselineFigures]) -> BaselineFigures:
    """The mean of runs made at different times of one benchmark (a shared machine's speed drifts)."""
    return BaselineFigures(
        statistics.fmean(run.single_stream_tokens_per_second for run in runs),
        _mean_per_row([run.batch_tokens_per_second for run in runs]),
        _mean_per_row([run.batch_end_to_end_tokens_per_second for run in runs]),
        tuple(runs),
    )


def _mean_per_row(rates: Sequence[dict[int, float]]) -> dict[int, float]:
    """The mean for each row count every run measured."""
    rows = [row for row in sorted(rates[0]) if all(row in rate for rate in rates)]
    return {row: statistics.fmean(rate[row] for rate in rates) for row in rows}


def bench_compute_dtype() -> ComputeDtype:
    """What `--compute-dtype auto` resolves to on the device MLX computes on here (float32 on the CPU,
    bfloat16 on a recent CUDA GPU): the clusters and mlx-lm both compute in it."""
    return detect_compute_device().auto_compute_dtype


class BaselineModel:
    """mlx-lm loaded once in this process: the runs before and after the clusters, and the one-stream
    runs in the same minutes as each cluster's, all use it."""

    def __init__(self, model_dir: Path, compute_dtype: ComputeDtype, max_tokens: int, prefill_step_size: int) -> None:
        model, self._wrapped_tokenizer = load(str(model_dir))
        self._model = convert_module(model, compute_dtype)
        self._tokenizer = ModelTokenizer.from_directory(model_dir)
        self._prompt = self._tokenizer.encode_text(prompt_for(0))
        self._max_tokens = max_tokens
        self._prefill_step_size = prefill_step_size

    def one_stream_rate(self) -> float:
        """Decode rate from the first token to the last (prefill excluded), as the cluster's."""
        times: list[float] = []
        for _ in generate_step(
            mx.array(self._prompt), self._model, max_tokens=self._max_tokens, prefill_step_size=self._prefill_step_size
        ):
            times.append(time.perf_counter())
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0

    def measure(self, batch_sizes: tuple[int, ...]) -> BaselineFigures:
        single = self.one_stream_rate()
        batches: dict[int, float] = {}
        end_to_end: dict[int, float] = {}
        for rows in batch_sizes:
            prompts = [self._tokenizer.encode_text(prompt_for(index)) for index in range(rows)]
            started = time.perf_counter()
            response = batch_generate(self._model, self._wrapped_tokenizer, prompts, max_tokens=self._max_tokens)
            batches[rows] = response.stats.generation_tps
            end_to_end[rows] = response.stats.generation_tokens / (time.perf_counter() - started)
        return BaselineFigures(single, batches, end_to_end)
