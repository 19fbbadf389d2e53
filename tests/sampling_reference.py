"""Sampling options against their reference: plain mlx-lm's `generate_step` in this process with the
same `make_sampler` and `logits_processors`, and the same options sent through a real shard ring.

OpenAI's presence and frequency penalties count generated tokens only: the reference gives mlx-lm's
own processors the tokens after the prompt (with a window as long as the generation).
"""

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_frequency_penalty, make_logits_processors, make_presence_penalty, make_sampler
from mlx_lm.utils import load_model

from services.kernel.compute_dtype import ComputeDtype
from services.kernel.sampling import SamplingOptions
from services.platform.grpc_server import cluster_sync_channel
from services.platform.mlx_compute import convert_module
from services.platform.mlx_typing import to_float_list
from services.wire.generate_call import sampling_to_pb
from strata_wire import shard_pb2, shard_pb2_grpc

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass(frozen=True)
class SampledStep:
    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@cache
def _model(model_dir: Path, compute_dtype: ComputeDtype) -> nn.Module:
    model, _ = load_model(model_dir)
    return convert_module(model, compute_dtype)


def reference_logits_processors(options: SamplingOptions, prompt_length: int) -> list[LogitsProcessor]:
    """mlx-lm's processors for `options`, as the last shard applies them."""
    processors: list[LogitsProcessor] = make_logits_processors(
        logit_bias=dict(options.logit_bias) or None,
        repetition_penalty=options.repetition_penalty or None,
        repetition_context_size=options.repetition_context_size,
    )
    for penalty, make_penalty in (
        (options.presence_penalty, make_presence_penalty),
        (options.frequency_penalty, make_frequency_penalty),
    ):
        if penalty:
            processor = make_penalty(penalty, 2**31 - 1)
            processors.append(lambda tokens, logits, apply=processor: apply(tokens[prompt_length:], logits))
    return processors


def reference_steps(
    model_dir: Path,
    prompt: Sequence[int],
    max_tokens: int,
    prefill_step_size: int,
    options: SamplingOptions,
    compute_dtype: ComputeDtype = "stored",
) -> list[SampledStep]:
    """What plain mlx-lm generates with these options: tokens and, when asked, logprobs as it yields them."""
    mx.random.seed(options.seed)
    sampler = make_sampler(options.temperature, options.top_p, options.min_p, top_k=options.top_k)
    steps: list[SampledStep] = []
    for token, logprobs in generate_step(
        mx.array(list(prompt)),
        _model(model_dir, compute_dtype),
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=reference_logits_processors(options, len(prompt)),
        prefill_step_size=prefill_step_size,
    ):
        if not options.logprobs:
            steps.append(SampledStep(token))
            continue
        values = to_float_list(logprobs)
        best = sorted(range(len(values)), key=lambda index: (-values[index], index))[: options.top_logprobs]
        steps.append(SampledStep(token, values[token], tuple((index, values[index]) for index in best)))
    return steps


def ring_steps(
    first_address: str, instance_id: str, prompt: Sequence[int], max_tokens: int, options: SamplingOptions
) -> list[SampledStep]:
    """One request through a shard ring, by token id, with these options."""
    with cluster_sync_channel(first_address) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(
            shard_pb2.GenerateRequest(
                request_id=uuid.uuid4().hex,
                instance_id=instance_id,
                prompt_tokens=list(prompt),
                max_tokens=max_tokens,
                sampling=sampling_to_pb(options),
            ),
            timeout=300,
        )
        steps: list[SampledStep] = []
        for reply in replies:
            if reply.HasField("token"):
                token = reply.token
                steps.append(
                    SampledStep(
                        token.token_id,
                        token.logprob if token.HasField("logprob") else None,
                        tuple((entry.token_id, entry.logprob) for entry in token.top_logprobs),
                    )
                )
        return steps
