"""One forward step over the rows of several requests, exact per request.

Row-wise work (norms, the q/k/v/o projections, the MLP, the LM head) runs on every row of the
batch at once; attention runs per request, on its own KV cache, through the model's own attention
module (its projections are swapped for the batched results while it runs). A request's rows thus
see exactly the ops they would see alone, provided row-wise results do not depend on how many rows
share a matmul. `check_batch_invariance` verifies that on the stage's real layers at load; where it
fails, `forward_rows` runs each request alone (the batch-invariant mode) and stays exact.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import mlx.core as mx
from mlx import nn
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class Block(Protocol):
    def __call__(self, x: mx.array, mask: mx.array | str | None, cache: KVCache) -> mx.array: ...


@dataclass(frozen=True)
class RequestRows:
    """Rows [start, start + length) of the batch belong to one request with these caches."""

    caches: Sequence[KVCache]
    start: int
    length: int


class _Held:
    """Plain holder (not an mx.array attribute, so MLX does not take it for a parameter)."""

    value: mx.array | None = None


class _Precomputed(nn.Module):
    """Stands in for a projection: returns the batched result for the rows being attended."""

    def __init__(self) -> None:
        super().__init__()
        self.held = _Held()

    def __call__(self, x: mx.array) -> mx.array:
        value = self.held.value
        if value is None:
            raise RuntimeError("projection used outside a batched step")
        return value


class _PassThrough(nn.Module):
    """Stands in for o_proj: hands back its input, so o_proj runs once over the whole batch."""

    def __call__(self, x: mx.array) -> mx.array:
        return x


def is_batchable(block: object) -> bool:
    """Pre-norm blocks whose attention has separate q/k/v/o projections (llama, qwen2, qwen3, ...)."""
    if not isinstance(block, nn.Module):
        return False
    parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    if not all(part in block for part in parts):
        return False
    attention = cast(object, block["self_attn"])
    return isinstance(attention, nn.Module) and all(name in attention for name in _PROJECTIONS)


class RowFunction(Protocol):
    def __call__(self, x: mx.array, /) -> mx.array: ...


class _Attention(Protocol):
    def __call__(self, x: mx.array, mask: mx.array | str | None, cache: KVCache) -> mx.array: ...


def _part(module: nn.Module, name: str) -> RowFunction:
    return cast(RowFunction, module[name])


def _batched_block(block: nn.Module, hidden: mx.array, requests: Sequence[RequestRows], layer: int) -> mx.array:
    """The block's own computation, with row-wise parts over the whole batch.

    hidden: (1, rows, hidden_size) -> (1, rows, hidden_size)
    """
    attention = cast(nn.Module, block["self_attn"])
    normed = _part(block, "input_layernorm")(hidden)
    originals = {name: _part(attention, name) for name in _PROJECTIONS}
    projected = {name: originals[name](normed) for name in ("q_proj", "k_proj", "v_proj")}  # (1, rows, width)
    stand_ins = {name: _Precomputed() for name in projected}
    pieces: list[mx.array] = []
    try:
        for name, stand_in in stand_ins.items():
            attention[name] = stand_in
        attention["o_proj"] = _PassThrough()
        attend = cast(_Attention, attention)
        for rows in requests:
            end = rows.start + rows.length
            for name, stand_in in stand_ins.items():
                stand_in.held.value = projected[name][:, rows.start : end]
            request_normed = normed[:, rows.start : end]
            cache = rows.caches[layer]
            pieces.append(attend(request_normed, create_attention_mask(request_normed, cache), cache))
    finally:
        for name, original in originals.items():
            attention[name] = original
    attended = originals["o_proj"](mx.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0])
    after_attention = hidden + attended
    return after_attention + _part(block, "mlp")(_part(block, "post_attention_layernorm")(after_attention))


def _alone(block: Block, hidden: mx.array, requests: Sequence[RequestRows], layer: int) -> mx.array:
    """Each request through the block by itself: the batch-invariant mode."""
    outputs: list[mx.array] = []
    for rows in requests:
        request_hidden = hidden[:, rows.start : rows.start + rows.length]
        cache = rows.caches[layer]
        outputs.append(block(request_hidden, create_attention_mask(request_hidden, cache), cache))
    return mx.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0]


def forward_rows(blocks: Sequence[Block], hidden: mx.array, requests: Sequence[RequestRows], batched: bool) -> mx.array:
    """Runs every block of a stage over the batch. hidden: (1, rows, hidden_size)."""
    for layer, block in enumerate(blocks):
        if len(requests) == 1:
            rows = requests[0]
            cache = rows.caches[layer]
            hidden = block(hidden, create_attention_mask(hidden, cache), cache)
        elif batched:
            hidden = _batched_block(cast(nn.Module, block), hidden, requests, layer)
        else:
            hidden = _alone(block, hidden, requests, layer)
    return hidden


def _primed_cache(block: Block, length: int, hidden_size: int, dtype: mx.Dtype) -> KVCache:
    cache = KVCache()
    if length:
        context = mx.random.normal((1, length, hidden_size), key=mx.random.key(length)).astype(dtype)
        block(context, create_attention_mask(context, cache), cache)
    return cache


def check_batch_invariance(
    block: Block, row_modules: Sequence[RowFunction], hidden_size: int, dtype: mx.Dtype, max_rows: int
) -> bool:
    """Whether batching rows of different requests leaves every request's results bitwise unchanged.

    Runs one real block over a batch mixing decode rows and a long prefill chunk (up to `max_rows`
    rows in all), against each request alone; and each row-wise head module over many rows against
    one row at a time.
    """
    lengths = [1, 1, 3, 1, max(1, max_rows - 10), 1, 2, 1]
    contexts = [5, 17, 0, 40, 9, 2, 33, 64]
    total = sum(lengths)
    hidden = mx.random.normal((1, total, hidden_size), key=mx.random.key(2026)).astype(dtype)
    results: list[mx.array] = []
    for batched in (True, False):
        requests: list[RequestRows] = []
        start = 0
        for length, context in zip(lengths, contexts, strict=True):
            requests.append(RequestRows([_primed_cache(block, context, hidden_size, dtype)], start, length))
            start += length
        results.append(forward_rows([block], hidden, requests, batched=batched))
    if not mx.array_equal(results[0], results[1]).item():
        return False
    rows = hidden[:, :33]
    for module in row_modules:
        together = module(rows)
        one_by_one = mx.concatenate([module(rows[:, index : index + 1]) for index in range(rows.shape[1])], axis=1)
        if not mx.array_equal(together, one_by_one).item():
            return False
    return True
