"""At load: for each distinct layer kind of a stage, may rows of different requests share its work?

Layers differ in what the batched path must get right: their attention (full or a sliding window,
sinks, latent attention), their feed-forward (dense, or a mixture of experts whose kernels change
path with the rows routed: SwitchGLU sorts its rows from 64 indices on) and their block's own
arithmetic (extra norms, residual multipliers). Each distinct kind is checked once, on its first
layer in the stage, with caches of its kind (`check_batch_invariance`); layers of a kind that fails,
or whose blocks the batched path cannot express, run each request alone, which is exact. Native
attention is tried only where it can serve the layer: full attention of a llama-form block in
float32 (no windows, sinks or latent attention); everywhere else attention runs through MLX.
"""

import logging
from collections.abc import Sequence
from typing import cast

import mlx.core as mx
from mlx import nn

from shard_server.batched_forward import (
    Block,
    LayerPlan,
    RowFunction,
    check_batch_invariance,
    is_batchable,
    row_modules_independent,
)
from shard_server.layer_kinds import LayerKind
from shard_server.native_attention import NativeAttention, load_native_attention

logger = logging.getLogger(__name__)

LayerSignature = tuple[LayerKind, str, tuple[tuple[str, str], ...]]
"""A layer's kind, its block class and the classes of the block's parts (dense or MoE feed-forward)."""


def layer_signature(block: Block, kind: LayerKind) -> LayerSignature:
    parts: list[tuple[str, str]] = []
    if isinstance(block, nn.Module):
        children = cast(dict[str, object], block.children())
        parts = sorted((name, type(child).__name__) for name, child in children.items())
    return kind, type(block).__name__, tuple(parts)


def describe_signature(signature: LayerSignature) -> str:
    kind, block_class, parts = signature
    feed_forward = next((part for name, part in parts if name in ("mlp", "feed_forward", "block_sparse_moe")), "")
    return f"{block_class} ({kind.describe()}{', ' + feed_forward if feed_forward else ''})"


def _native_for(block: Block, kind: LayerKind, hidden_size: int, max_rows: int, threads: int) -> NativeAttention | None:
    native = load_native_attention()
    if native is None:
        return None
    native.threads = threads
    # Grouped heads (fewer BLAS calls) where they are exact here, else MLX's own call shapes.
    for candidate in (native.grouped(), native):
        if check_batch_invariance(block, [], hidden_size, mx.float32, max_rows, kind, native=candidate):
            return candidate
    return None


def plan_layers(
    layers: Sequence[Block],
    kinds: Sequence[LayerKind],
    head: Sequence[RowFunction],
    hidden_size: int,
    dtype: mx.Dtype,
    max_rows: int,
    threads: int,
) -> tuple[LayerPlan, ...]:
    """One plan per layer; every layer runs requests alone when the head's rows are not independent."""
    if not row_modules_independent(head, hidden_size, dtype):
        logger.info("the LM head's row results depend on the batch here: each request runs alone")
        return tuple(LayerPlan(kind) for kind in kinds)
    decided: dict[LayerSignature, LayerPlan] = {}
    plans: list[LayerPlan] = []
    for block, kind in zip(layers, kinds, strict=True):
        signature = layer_signature(block, kind)
        if signature not in decided:
            decided[signature] = _plan_kind(block, kind, hidden_size, dtype, max_rows, threads, signature)
        plans.append(decided[signature])
    return tuple(plans)


def _plan_kind(
    block: Block,
    kind: LayerKind,
    hidden_size: int,
    dtype: mx.Dtype,
    max_rows: int,
    threads: int,
    signature: LayerSignature,
) -> LayerPlan:
    name = describe_signature(signature)
    if not is_batchable(block):
        logger.info("%s layers: each request runs alone (the block is not of the form the batched path runs)", name)
        return LayerPlan(kind)
    rows_cap: int | None = None
    if not check_batch_invariance(block, [], hidden_size, dtype, max_rows, kind):
        rows_cap = _largest_invariant_rows(block, kind, hidden_size, dtype, max_rows)
        if rows_cap is None:
            # Either rows' bits change with the batch here, or the block does more than the batched path
            # (gemma's extra norms): the comparison cannot tell, and either way requests must run alone.
            logger.info("%s layers: batched rows differ from each request alone, so each request runs alone", name)
            return LayerPlan(kind)
    native = None
    if kind.window is None and dtype == mx.float32:
        native = _native_for(block, kind, hidden_size, rows_cap or max_rows, threads)
    logger.info(
        "%s layers: rows of different requests share batches%s; attention %s",
        name,
        "" if rows_cap is None else f" of up to {rows_cap} rows (larger ones change the experts' kernels)",
        "in one native call" if native is not None else "through MLX (native attention serves full attention only)",
    )
    return LayerPlan(kind, batched=True, native=native, max_rows=rows_cap)


SMALLEST_CHECKED_BATCH = 11
"""The fewest rows `check_batch_invariance` mixes: its eight requests with a one-row prompt chunk."""


def _largest_invariant_rows(
    block: Block, kind: LayerKind, hidden_size: int, dtype: mx.Dtype, max_rows: int
) -> int | None:
    """A mixture of experts: the most rows (halving from `max_rows`) whose batches stay exact, if any.

    SwitchGLU sorts the rows it routes from 64 indices on (rows x experts per token), and a sorted
    product may round differently: a batch whose routed indices stay below that gives each request
    the bits it gets alone, which the check confirms at that size. Other blocks are not retried.
    """
    if not _routes_experts(block):
        return None
    rows = max_rows // 2
    while rows >= SMALLEST_CHECKED_BATCH:
        if check_batch_invariance(block, [], hidden_size, dtype, rows, kind):
            return rows
        rows //= 2
    return None


def _routes_experts(block: Block) -> bool:
    if not isinstance(block, nn.Module):
        return False
    modules = cast(list[object], block.modules())
    return any(type(module).__name__ in ("SwitchGLU", "SwitchMLP") for module in modules)
