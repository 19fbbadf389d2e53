from collections.abc import Callable

import mlx.core as mx

Sampler = Callable[[mx.array], mx.array]

def make_sampler(
    temp: float = 0.0,
    top_p: float = 0.0,
    min_p: float = 0.0,
    min_tokens_to_keep: int = 1,
    top_k: int = 0,
) -> Sampler: ...
def greedy_sampler(logprobs: mx.array) -> mx.array: ...
def apply_top_p(logprobs: mx.array, top_p: float) -> mx.array: ...
def apply_top_k(logprobs: mx.array, top_k: int) -> mx.array: ...
def categorical_sampling(logits: mx.array, temp: float) -> mx.array: ...
