"""A test client for the shard ring: assign stages with the real Assign RPC, run requests by token id,
and compute the reference tokens with plain mlx-lm in this process."""

import uuid
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load_model

from services.kernel.compute_dtype import ComputeDtype
from services.platform.grpc_server import cluster_sync_channel
from services.platform.mlx_compute import convert_module
from strata_wire import common_pb2, shard_pb2, shard_pb2_grpc


def even_split(num_layers: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(num_layers, parts)
    ranges: list[tuple[int, int]] = []
    start = 0
    for index in range(parts):
        end = start + base + (1 if index < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def assign_ring(
    addresses: Sequence[str],
    model_id: str,
    num_layers: int,
    term: int,
    prefill_step_size: int,
    compute_dtype: ComputeDtype = "stored",
) -> str:
    """Loads the model split evenly over `addresses` (in ring order); returns the instance id."""
    instance_id = f"{model_id}@{uuid.uuid4().hex[:8]}"
    ranges = even_split(num_layers, len(addresses))
    for index, (address, (start, end)) in enumerate(zip(addresses, ranges, strict=True)):
        with cluster_sync_channel(address) as channel:
            shard_pb2_grpc.ShardStub(channel).Assign(
                shard_pb2.AssignRequest(
                    term=term,
                    instance_id=instance_id,
                    model_id=model_id,
                    start_layer=start,
                    end_layer=end,
                    num_layers=num_layers,
                    next_address=addresses[(index + 1) % len(addresses)],
                    prefill_step_size=prefill_step_size,
                    compute_dtype=compute_dtype,
                    ring_size=len(addresses),
                ),
                timeout=120,
            )
    return instance_id


def generate_tokens(
    first_address: str,
    instance_id: str,
    prompt: Sequence[int],
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
) -> tuple[list[int], str]:
    """Runs one request through the ring; returns the generated token ids and the finish reason."""
    with cluster_sync_channel(first_address) as channel:
        replies = shard_pb2_grpc.ShardStub(channel).Generate(
            shard_pb2.GenerateRequest(
                request_id=uuid.uuid4().hex,
                instance_id=instance_id,
                prompt_tokens=list(prompt),
                max_tokens=max_tokens,
                stop_token_ids=list(stop_token_ids),
                sampling=common_pb2.SamplingParams(temperature=temperature, top_p=top_p, seed=seed),
            ),
            timeout=300,
        )
        tokens: list[int] = []
        reason = ""
        for reply in replies:
            if reply.HasField("token"):
                tokens.append(reply.token.token_id)
            else:
                reason = reply.finished.reason
        return tokens, reason


def reference_tokens(
    model_dir: Path,
    prompt: Sequence[int],
    max_tokens: int,
    prefill_step_size: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
    compute_dtype: ComputeDtype = "stored",
) -> list[int]:
    """What plain mlx-lm generates in one process on the same weights, dtype and prefill chunking."""
    model, _ = load_model(model_dir)
    model = convert_module(model, compute_dtype)
    mx.random.seed(seed)
    sampler = make_sampler(temperature, top_p)
    tokens: list[int] = []
    for token, _ in generate_step(
        mx.array(list(prompt)), model, max_tokens=max_tokens, sampler=sampler, prefill_step_size=prefill_step_size
    ):
        tokens.append(token)
        if token in stop_token_ids:
            break
    return tokens


def shard_stats(address: str) -> shard_pb2.ShardStats:
    with cluster_sync_channel(address) as channel:
        return shard_pb2_grpc.ShardStub(channel).GetStats(shard_pb2.GetStatsRequest(), timeout=30)
