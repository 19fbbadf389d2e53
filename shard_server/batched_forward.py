"""One forward step over the rows of several requests, exact per request.

Row-wise work (norms, the q/k/v/o projections, RoPE with each row at its own position, the MLP,
the LM head) runs on every row of the batch at once; the KV cache update and scaled dot-product
attention run per request, on its own cache, with the shapes and ops of the model's attention
running that request alone. A request's rows thus see exactly the ops they would see alone,
provided row-wise results do not depend on how many rows share an op. `check_batch_invariance`
verifies that on the stage's real layers at load, once per layer kind (see `layer_kinds`: sliding or
global, dense or mixture of experts); where it fails, `forward_rows` runs each request alone through
the layers of that kind (the batch-invariant mode) and stays exact.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import mlx.core as mx
from mlx import nn
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import KVCache

from services.platform.mlx_typing import start_evaluating
from shard_server.fused_block import FusedLlamaAttention, FusedLlamaBlock
from shard_server.layer_kinds import FULL_ATTENTION, AttentionMask, LayerKind, StageCache
from shard_server.native_attention import NativeAttention, request_rows_view

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class Block(Protocol):
    def __call__(self, x: mx.array, mask: AttentionMask, cache: StageCache) -> mx.array: ...


@dataclass(frozen=True)
class RequestRows:
    """Rows [start, start + length) of the batch belong to one request with these caches."""

    caches: Sequence[StageCache]
    start: int
    length: int


@dataclass(frozen=True)
class LayerPlan:
    """How `forward_rows` runs one layer over a batch of several requests."""

    kind: LayerKind = FULL_ATTENTION
    batched: bool = False
    """Row-wise work over the whole batch (checked exact at load); else each request alone."""
    native: NativeAttention | None = None
    """The batch's attention in one native call (full-attention layers, checked bitwise at load)."""
    max_rows: int | None = None
    """Batches of more rows run each request alone (a mixture's kernels change path past some rows)."""

    def batches(self, rows: int) -> bool:
        return self.batched and (self.max_rows is None or rows <= self.max_rows)


def is_batchable(block: object) -> bool:
    """Pre-norm blocks whose attention has separate q/k/v/o projections (llama, qwen2, qwen3, ...)."""
    if not isinstance(block, nn.Module):
        return False
    parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    if not all(part in block for part in parts):
        return False
    attention = cast(object, block["self_attn"])
    if not isinstance(attention, nn.Module):
        return False
    # A fused llama block's attention holds q/k/v as one joined product (fused_block.py).
    joined = isinstance(attention, FusedLlamaAttention) and all(name in attention for name in ("o_proj", "rope"))
    if not joined and not all(name in attention for name in (*_PROJECTIONS, "rope")):
        return False
    return all(isinstance(getattr(attention, name, None), int | float) for name in ("n_heads", "n_kv_heads", "scale"))


class RowFunction(Protocol):
    def __call__(self, x: mx.array, /) -> mx.array: ...


def _part(module: nn.Module, name: str) -> RowFunction:
    return cast(RowFunction, module[name])


class _Rope(Protocol):
    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array: ...


def _heads(attention: nn.Module, projected: mx.array, count_name: str, norm_name: str | None) -> mx.array:
    """(1, rows, heads * head_dim) -> (rows, heads, 1, head_dim): every row its own batch entry.

    Qwen3's per-head norm runs before the transpose, as in the model's own attention.
    """
    rows = projected.shape[1]
    split = mx.reshape(projected, (rows, 1, cast(int, getattr(attention, count_name)), -1))
    if norm_name is not None and norm_name in attention:
        split = _part(attention, norm_name)(split)
    return mx.transpose(split, (0, 2, 1, 3))


def _batched_block(
    block: nn.Module,
    hidden: mx.array,
    requests: Sequence[RequestRows],
    layer: int,
    plan: LayerPlan,
    pending: mx.array | None = None,
) -> tuple[mx.array, mx.array | None]:
    """The block's own computation, with everything but the attention proper over the whole batch.

    Projections, norms, RoPE (one call, each row at its own position) and the MLP run over all rows;
    the KV cache update and scaled dot-product attention run per request, with the same shapes and
    ops as the model's attention running that request alone (or in one native call doing the same
    arithmetic, where the shard verified it bitwise at load).

    hidden: (1, rows, hidden_size) -> (1, rows, hidden_size), with nothing pending. A fused llama block that
    carries the residual takes the previous block's MLP output as `pending` (added in its input norm's op)
    and returns its own MLP output unadded, as `FusedLlamaBlock.residual_parts` does.
    """
    attention = cast(nn.Module, block["self_attn"])
    rope = cast(_Rope, attention["rope"])
    if isinstance(block, FusedLlamaBlock):
        hidden, normed = block.input_rows(hidden, pending)
    else:
        normed = _part(block, "input_layernorm")(hidden)
    positions = mx.array(
        [rows.caches[layer].offset + index for rows in requests for index in range(rows.length)],
        dtype=mx.int32,
    )
    if isinstance(attention, FusedLlamaAttention):
        # The same projections as the fused block's own attention (one product where q/k/v join), as views.
        split = attention.heads(mx.reshape(normed, (hidden.shape[1], 1, -1)), (hidden.shape[1], 1))
        query_heads, key_heads, value_heads = (mx.transpose(part, (0, 2, 1, 3)) for part in split)
        queries, keys, values = rope(query_heads, offset=positions), rope(key_heads, offset=positions), value_heads
    else:
        queries = rope(_heads(attention, _part(attention, "q_proj")(normed), "n_heads", "q_norm"), offset=positions)
        keys = rope(_heads(attention, _part(attention, "k_proj")(normed), "n_kv_heads", "k_norm"), offset=positions)
        values = _heads(attention, _part(attention, "v_proj")(normed), "n_kv_heads", None)
    scale = cast(float, attention.scale)
    caches = [rows.caches[layer] for rows in requests]
    merged: mx.array | None = None
    whole_context = [cache for cache in caches if type(cache) is KVCache]
    if plan.native is not None and queries.dtype == mx.float32 and len(whole_context) == len(caches):
        merged = plan.native.attend(
            queries,
            keys,
            values,
            whole_context,
            [rows.start for rows in requests],
            [rows.length for rows in requests],
            scale,
        )
    if merged is None:
        pieces: list[mx.array] = []
        for rows, cache in zip(requests, caches, strict=True):
            mask = plan.kind.mask(normed[:, rows.start : rows.start + rows.length], cache)
            request_keys, request_values = cache.update_and_fetch(
                request_rows_view(keys, rows.start, rows.length), request_rows_view(values, rows.start, rows.length)
            )
            request_queries = request_rows_view(queries, rows.start, rows.length)
            pieces.append(
                scaled_dot_product_attention(
                    request_queries, request_keys, request_values, cache=cache, scale=scale, mask=mask
                )
            )
        attended = mx.concatenate(pieces, axis=2) if len(pieces) > 1 else pieces[0]  # (1, heads, rows, head_dim)
        merged = mx.reshape(mx.transpose(attended, (0, 2, 1, 3)), (1, hidden.shape[1], -1))
    attended_out = _part(attention, "o_proj")(merged)
    residual_multiplier = getattr(block, "residual_multiplier", None)
    if isinstance(residual_multiplier, int | float):
        # Granite scales each branch before adding it to the residual stream, as its block does.
        after_attention = hidden + attended_out * residual_multiplier
        mlp_out = _part(block, "mlp")(_part(block, "post_attention_layernorm")(after_attention))
        return after_attention + mlp_out * residual_multiplier, None
    if isinstance(block, FusedLlamaBlock):
        after_attention, normed_after = block.add_and_norm(hidden, attended_out)
        mlp_out = _part(block, "mlp")(normed_after)
        return (after_attention, mlp_out) if block.carries_residual else (after_attention + mlp_out, None)
    after_attention = hidden + attended_out
    return after_attention + _part(block, "mlp")(_part(block, "post_attention_layernorm")(after_attention)), None


def _alone(block: Block, hidden: mx.array, requests: Sequence[RequestRows], layer: int, kind: LayerKind) -> mx.array:
    """Each request through the block by itself: the batch-invariant mode."""
    outputs: list[mx.array] = []
    for rows in requests:
        request_hidden = hidden[:, rows.start : rows.start + rows.length]
        cache = rows.caches[layer]
        outputs.append(block(request_hidden, kind.mask(request_hidden, cache), cache))
    return mx.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0]


def forward_rows(
    blocks: Sequence[Block], hidden: mx.array, requests: Sequence[RequestRows], plans: Sequence[LayerPlan]
) -> mx.array:
    """Runs every block of a stage over the batch, each as its plan says. hidden: (1, rows, hidden_size).

    Each block's graph starts computing as soon as it is built (`mx.async_eval`), while Python builds
    the next: building the graph of 30 blocks takes ~20% of a one-row step here, which would
    otherwise come on top of the compute. The ops, hence the results, are the same.
    """
    # A fused llama block's MLP output, not yet added to `hidden`: the next such block adds it in its
    # input norm's op (checked bitwise at load); anything else gets MLX's `hidden + pending` first.
    pending: mx.array | None = None
    for layer, (block, plan) in enumerate(zip(blocks, plans, strict=True)):
        carries = isinstance(block, FusedLlamaBlock) and block.carries_residual
        if pending is not None and not carries:
            hidden, pending = hidden + pending, None
        if len(requests) == 1:
            cache = requests[0].caches[layer]
            if isinstance(block, FusedLlamaBlock) and carries:
                hidden, pending = block.residual_parts(hidden, pending, plan.kind.mask(hidden, cache), cache)
            else:
                hidden = block(hidden, plan.kind.mask(hidden, cache), cache)
        elif plan.batches(hidden.shape[1]):
            hidden, pending = _batched_block(cast(nn.Module, block), hidden, requests, layer, plan, pending)
        else:
            if pending is not None:
                hidden, pending = hidden + pending, None
            hidden = _alone(block, hidden, requests, layer, plan.kind)
        start_evaluating(hidden, *([] if pending is None else [pending]))
    return hidden if pending is None else hidden + pending


def _primed_cache(block: Block, kind: LayerKind, length: int, hidden_size: int, dtype: mx.Dtype) -> StageCache:
    cache = kind.new_cache()
    if length:
        context = mx.random.normal((1, length, hidden_size), key=mx.random.key(length)).astype(dtype)
        block(context, kind.mask(context, cache), cache)
    return cache


def check_batch_invariance(
    block: Block,
    row_modules: Sequence[RowFunction],
    hidden_size: int,
    dtype: mx.Dtype,
    max_rows: int,
    kind: LayerKind = FULL_ATTENTION,
    native: NativeAttention | None = None,
) -> bool:
    """Whether batching rows of different requests leaves every request's results bitwise unchanged.

    Runs one real block of `kind` over a batch mixing decode rows and a long prefill chunk (up to
    `max_rows` rows in all; a mixture of experts changes kernels with the rows it routes) on caches
    shorter and longer than any window, against each request alone; and each row-wise head module
    over many rows against one row at a time. With `native`, the batch's attention runs through it.
    """
    lengths = [1, 1, 3, 1, max(1, max_rows - 10), 1, 2, 1]
    contexts = [5, 17, 0, 40, 9, 2, 33, 300]
    total = sum(lengths)
    hidden = mx.random.normal((1, total, hidden_size), key=mx.random.key(2026)).astype(dtype)
    results: list[mx.array] = []
    for batched in (True, False):
        requests: list[RequestRows] = []
        start = 0
        for length, context in zip(lengths, contexts, strict=True):
            requests.append(RequestRows([_primed_cache(block, kind, context, hidden_size, dtype)], start, length))
            start += length
        plan = LayerPlan(kind, batched, native if batched else None)
        results.append(forward_rows([block], hidden, requests, [plan]))
    if not mx.array_equal(results[0], results[1]).item():
        return False
    return row_modules_independent(row_modules, hidden_size, dtype)


def row_modules_independent(row_modules: Sequence[RowFunction], hidden_size: int, dtype: mx.Dtype) -> bool:
    """Whether each row-wise module gives every row the same bits over 33 rows as over that row alone."""
    rows = mx.random.normal((1, 33, hidden_size), key=mx.random.key(2027)).astype(dtype)
    for module in row_modules:
        together = module(rows)
        one_by_one = mx.concatenate([module(rows[:, index : index + 1]) for index in range(rows.shape[1])], axis=1)
        if not mx.array_equal(together, one_by_one).item():
            return False
    return True
