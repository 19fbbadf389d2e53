from collections.abc import Callable, Generator

import mlx.core as mx
from mlx import nn

def generate_step(
    prompt: mx.array,
    model: nn.Module,
    *,
    max_tokens: int = 256,
    sampler: Callable[[mx.array], mx.array] | None = None,
    logits_processors: list[Callable[[mx.array, mx.array], mx.array]] | None = None,
    prefill_step_size: int = 2048,
) -> Generator[tuple[int, mx.array], None, None]: ...

class BatchStats:
    generation_tps: float
    generation_tokens: int
    prompt_tps: float

class BatchResponse:
    texts: list[str]
    stats: BatchStats

def batch_generate(
    model: nn.Module,
    tokenizer: object,
    prompts: list[list[int]],
    max_tokens: int | list[int] = 128,
) -> BatchResponse: ...
