"""A llama block with fewer ops: q/k/v in one float16 product, residual adds joined to the next norms.

mlx-lm's llama `TransformerBlock` runs three float16 products for q, k and v, then `x + attention`
and the post-attention RMSNorm as two ops, and `h + mlp` before the next block's input norm as two
more. `FusedLlamaBlock` mirrors its `__call__` (and `Attention.__call__`: caches, masks, RoPE
offsets) with three changes: one product over the concatenated `[q; k; v]` weight rows, split into
views (the kernel computes each output column from its weight row alone, so the parts are the three
products' bits); the extension's `add_rms_norm` giving the residual sum and the norm's rows in one
op; and, through `residual_parts`, the MLP's output handed to the next fused block unadded, which
adds it in its input norm's op (`batched_forward.forward_rows` adds it with MLX's `+` before any
other block and after the last). `fuse_blocks` swaps a block for its twin only where the twin's
output equals the original's bitwise on primed caches (a decode row and a prefill chunk, both mask
forms, and with a carried residual), after checking `add_rms_norm` against MLX's add and the fused
norm on random rows; other families keep their own blocks. Switches (`off`): `STRATA_FUSED_QKV`
(three products), `STRATA_FUSED_ADD_NORM` (adds apart from norms; with the first off too, mlx-lm's
block), `STRATA_FUSED_NEXT_NORM` (the MLP's add stays in its own block).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import mlx.core as mx
from mlx import nn
from mlx_lm.models import llama
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import KVCache

from services.platform.mlx_typing import evaluate
from shard_server.compact_linear import CHECK_ROWS, Float16LinearLibrary
from shard_server.float16_weights import Float16Linear, set_module, switched_off
from shard_server.fused_ops import FusedRMSNorm
from shard_server.layer_kinds import FULL_ATTENTION, AttentionMask, LayerKind, StageCache

QKV_SWITCH_VARIABLE = "STRATA_FUSED_QKV"
"""`off` (or `0`, `false`, `no`) keeps q, k and v as three products."""
ADD_NORM_SWITCH_VARIABLE = "STRATA_FUSED_ADD_NORM"
"""`off` (or `0`, `false`, `no`) keeps the residual add and the post-attention norm as two ops."""
NEXT_NORM_SWITCH_VARIABLE = "STRATA_FUSED_NEXT_NORM"
"""`off` (or `0`, `false`, `no`) keeps each block's MLP residual add apart from the next block's input norm."""

_CHECK_CONTEXT = 19
"""Positions primed into the check's caches before its decode row and prefill chunk."""

logger = logging.getLogger(__name__)


class BlockLibrary(Float16LinearLibrary, Protocol):
    """The extension's float16 product, RMSNorm and add-then-RMSNorm (its C++ raises ValueError on bad input)."""

    def add_rms_norm(self, x: mx.array, branch: mx.array, weight: mx.array, eps: float) -> list[mx.array]: ...

    def rms_norm(self, x: mx.array, weight: mx.array, eps: float) -> mx.array: ...


class _Rope(Protocol):
    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array: ...


def _call(module: object, x: mx.array) -> mx.array:
    return cast(Callable[[mx.array], mx.array], module)(x)


def qkv_joinable(attention: nn.Module) -> bool:
    """Whether q, k and v are float16 linear layers without biases over the same inputs."""
    projections = [cast(object, attention[name]) for name in ("q_proj", "k_proj", "v_proj") if name in attention]
    if len(projections) != 3 or any(type(part) is not Float16Linear or "bias" in part for part in projections):
        return False
    widths = {cast(mx.array, cast(nn.Module, part)["weight"]).shape[1] for part in projections}
    return len(widths) == 1


class FusedLlamaAttention(nn.Module):
    """mlx-lm's llama `Attention` with q, k and v from one product (`qkv_proj`) where they join."""

    def __init__(self, library: BlockLibrary, original: llama.Attention, join: bool) -> None:
        super().__init__()
        self.n_heads: int = original.n_heads
        self.n_kv_heads: int = original.n_kv_heads
        self.head_dim: int = original.head_dim
        self.scale: float = original.scale
        self.rope = cast(nn.Module, original["rope"])
        self.o_proj = cast(nn.Module, original["o_proj"])
        if join:
            weights = [
                cast(mx.array, cast(nn.Module, original[name])["weight"]) for name in ("q_proj", "k_proj", "v_proj")
            ]
            self.qkv_proj = Float16Linear(library, mx.concatenate(weights, axis=0), None)
        else:
            self.q_proj = cast(nn.Module, original["q_proj"])
            self.k_proj = cast(nn.Module, original["k_proj"])
            self.v_proj = cast(nn.Module, original["v_proj"])

    def heads(self, x: mx.array, leading: tuple[int, int]) -> tuple[mx.array, mx.array, mx.array]:
        """q, k and v of rows x, each reshaped to (*leading, heads, head_dim) (no transpose yet)."""
        if "qkv_proj" not in self:
            return (
                mx.reshape(_call(cast(object, self["q_proj"]), x), (*leading, self.n_heads, -1)),
                mx.reshape(_call(cast(object, self["k_proj"]), x), (*leading, self.n_kv_heads, -1)),
                mx.reshape(_call(cast(object, self["v_proj"]), x), (*leading, self.n_kv_heads, -1)),
            )
        # One contiguous reshape of the joined rows, then one split into views: no copy of q, k or v.
        heads = self.n_heads + 2 * self.n_kv_heads
        joined = mx.reshape(_call(cast(object, self["qkv_proj"]), x), (*leading, heads, -1))
        queries, keys, values = mx.split(joined, [self.n_heads, self.n_heads + self.n_kv_heads], axis=2)
        return queries, keys, values

    def __call__(self, x: mx.array, mask: AttentionMask = None, cache: StageCache | None = None) -> mx.array:
        batch, length, _ = x.shape
        queries, keys, values = self.heads(x, (batch, length))
        queries = mx.transpose(queries, (0, 2, 1, 3))
        keys = mx.transpose(keys, (0, 2, 1, 3))
        values = mx.transpose(values, (0, 2, 1, 3))
        rope = cast(_Rope, self.rope)
        if cache is not None:
            queries = rope(queries, offset=cache.offset)
            keys = rope(keys, offset=cache.offset)
            keys, values = cache.update_and_fetch(keys, values)
        else:
            queries = rope(queries)
            keys = rope(keys)
        output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        output = mx.reshape(mx.transpose(output, (0, 2, 1, 3)), (batch, length, -1))
        return _call(self.o_proj, output)


class FusedLlamaBlock(nn.Module):
    """mlx-lm's llama `TransformerBlock` with the post-attention residual add and norm in one op."""

    def __init__(
        self, library: BlockLibrary, original: llama.TransformerBlock, join: bool, add_norm: bool, carry: bool = False
    ) -> None:
        super().__init__()
        self._library = library
        self._add_norm = add_norm
        self.carries_residual = carry and add_norm
        """Whether `forward_rows` may hand this block the previous block's MLP output still to be added."""
        self.use_sliding: bool = original.use_sliding
        self.self_attn = FusedLlamaAttention(library, cast(llama.Attention, original["self_attn"]), join)
        self.mlp = cast(nn.Module, original["mlp"])
        self.input_layernorm = cast(nn.Module, original["input_layernorm"])
        self.post_attention_layernorm = cast(nn.Module, original["post_attention_layernorm"])

    def _add_then(self, norm: nn.Module, x: mx.array, branch: mx.array) -> tuple[mx.array, mx.array]:
        if self._add_norm and isinstance(norm, FusedRMSNorm) and x.dtype == branch.dtype == mx.float32:
            total, normed = self._library.add_rms_norm(x, branch, norm.weight, norm.eps)
            return total, normed
        total = x + branch
        return total, _call(norm, total)

    def add_and_norm(self, x: mx.array, branch: mx.array) -> tuple[mx.array, mx.array]:
        """(x + branch, post_attention_layernorm(x + branch)), in one op where the check allowed it."""
        return self._add_then(self.post_attention_layernorm, x, branch)

    def input_rows(self, x: mx.array, pending: mx.array | None) -> tuple[mx.array, mx.array]:
        """(x + pending, input_layernorm(x + pending)): the previous block's residual add joined to this
        block's input norm (in one op where the check allowed it); x itself when nothing is pending."""
        if pending is None:
            return x, _call(self.input_layernorm, x)
        return self._add_then(self.input_layernorm, x, pending)

    def residual_parts(
        self, x: mx.array, pending: mx.array | None, mask: AttentionMask, cache: StageCache | None
    ) -> tuple[mx.array, mx.array]:
        """The block on x + pending, returned as (h, mlp(norm(h))) whose sum `__call__` gives."""
        x, normed_input = self.input_rows(x, pending)
        attended = self.self_attn(normed_input, mask, cache)
        after_attention, normed = self.add_and_norm(x, attended)
        return after_attention, _call(self.mlp, normed)

    def __call__(self, x: mx.array, mask: AttentionMask = None, cache: StageCache | None = None) -> mx.array:
        after_attention, mlp_output = self.residual_parts(x, None, mask, cache)
        return after_attention + mlp_output


@dataclass(frozen=True)
class FusedBlocks:
    """What the load swapped: blocks now `FusedLlamaBlock`s (and which join q/k/v), or why none."""

    fused_blocks: tuple[str, ...]
    joined_qkv: tuple[str, ...]
    kept_blocks: tuple[tuple[str, str], ...]
    reason: str = ""
    carrying_residual: tuple[str, ...] = ()
    """Fused blocks that take the previous block's MLP residual add into their input norm."""

    def describe(self) -> str:
        if self.reason:
            return f"llama blocks as mlx-lm's ({self.reason})"
        kept = f", {len(self.kept_blocks)} kept as mlx-lm's" if self.kept_blocks else ""
        return (
            f"{len(self.fused_blocks)} fused llama blocks, {len(self.joined_qkv)} with q/k/v in one product"
            f", {len(self.carrying_residual)} adding the residual into their input norm{kept}"
        )


def add_norm_matches(library: BlockLibrary, size: int, eps: float) -> bool:
    """Whether `add_rms_norm` gives MLX's `x + branch` and the fused norm's rows bitwise (1, 7, 33 rows)."""
    weight = mx.random.normal((size,), key=mx.random.key(size))
    for rows in CHECK_ROWS:
        x = mx.random.normal((1, rows, size), key=mx.random.key(rows * 131 + size)) * 3.0
        branch = mx.random.normal((1, rows, size), key=mx.random.key(rows * 137 + size))
        total, normed = library.add_rms_norm(x, branch, weight, eps)
        expected_total = x + branch
        if not mx.array_equal(total, expected_total).item():
            return False
        if not mx.array_equal(normed, library.rms_norm(expected_total, weight, eps)).item():
            return False
    return True


def _add_norm_checked(library: BlockLibrary, norm: object, checked: dict[tuple[int, float], bool]) -> bool:
    """Whether `norm` is a fused RMSNorm whose size and eps passed `add_norm_matches` (checked once each)."""
    if not isinstance(norm, FusedRMSNorm):
        return False
    key = (norm.weight.shape[0], norm.eps)
    if key not in checked:
        checked[key] = add_norm_matches(library, *key)
        if not checked[key]:
            logger.warning("add_rms_norm differs from MLX's add and norm (size %d): kept apart", key[0])
    return checked[key]


def _block_call(block: nn.Module) -> Callable[[mx.array, AttentionMask, StageCache], mx.array]:
    return cast(Callable[[mx.array, AttentionMask, StageCache], mx.array], block)


def _primed_caches(original: nn.Module, context: mx.array, kind: LayerKind) -> list[KVCache]:
    """Two caches holding the same context, primed through the original block: one for each block compared."""
    caches: list[KVCache] = []
    for _ in range(2):
        cache = KVCache()
        _block_call(original)(context, kind.mask(context, cache), cache)
        caches.append(cache)
    return caches


def same_block_results(original: nn.Module, twin: nn.Module, hidden_size: int) -> bool:
    """Whether both blocks give bitwise the same rows on equally primed caches: a decode row, then a chunk."""
    context = mx.random.normal((1, _CHECK_CONTEXT, hidden_size), key=mx.random.key(hidden_size))
    for kind in (FULL_ATTENTION, LayerKind(array_mask=True)):
        caches = _primed_caches(original, context, kind)
        for rows in (1, 7):
            x = mx.random.normal((1, rows, hidden_size), key=mx.random.key(rows * 7919 + hidden_size))
            outputs = [
                _block_call(block)(x, kind.mask(x, cache), cache)
                for block, cache in zip((original, twin), caches, strict=True)
            ]
            if not mx.array_equal(outputs[0], outputs[1]).item():
                return False
    carried = isinstance(twin, FusedLlamaBlock) and twin.carries_residual
    return not carried or _same_carried(original, cast(FusedLlamaBlock, twin), hidden_size)


def _same_carried(original: nn.Module, twin: FusedLlamaBlock, hidden_size: int) -> bool:
    """Whether the twin handed (x, pending) gives the rows the original gives for MLX's `x + pending`."""
    context = mx.random.normal((1, _CHECK_CONTEXT, hidden_size), key=mx.random.key(hidden_size + 1))
    caches = _primed_caches(original, context, FULL_ATTENTION)
    for rows in (1, 7):
        x = mx.random.normal((1, rows, hidden_size), key=mx.random.key(rows * 104_729 + hidden_size)) * 3.0
        pending = mx.random.normal((1, rows, hidden_size), key=mx.random.key(rows * 1_299_709 + hidden_size))
        expected = _block_call(original)(x + pending, FULL_ATTENTION.mask(x, caches[0]), caches[0])
        after_attention, mlp_output = twin.residual_parts(x, pending, FULL_ATTENTION.mask(x, caches[1]), caches[1])
        if not mx.array_equal(expected, after_attention + mlp_output).item():
            return False
    return True


def fuse_blocks(model: nn.Module, library: BlockLibrary | None) -> FusedBlocks:
    """Swaps the model's llama blocks for checked `FusedLlamaBlock`s (in place)."""
    join_allowed = not switched_off(variable=QKV_SWITCH_VARIABLE)
    add_norm_allowed = not switched_off(variable=ADD_NORM_SWITCH_VARIABLE)
    carry_allowed = not switched_off(variable=NEXT_NORM_SWITCH_VARIABLE)
    if not join_allowed and not add_norm_allowed:
        return FusedBlocks((), (), (), f"{QKV_SWITCH_VARIABLE}=off and {ADD_NORM_SWITCH_VARIABLE}=off")
    if library is None or not hasattr(library, "add_rms_norm"):
        return FusedBlocks((), (), (), "the fused ops extension has no add_rms_norm (rebuild it: make)")
    fused: list[str] = []
    joined: list[str] = []
    carrying: list[str] = []
    kept: list[tuple[str, str]] = []
    checked_norms: dict[tuple[int, float], bool] = {}
    named = cast(Callable[[], list[tuple[str, nn.Module]]], model.named_modules)()
    for path, module in named:
        if type(module) is not llama.TransformerBlock or type(cast(object, module["self_attn"])) is not llama.Attention:
            continue
        add_norm = add_norm_allowed and _add_norm_checked(
            library, cast(object, module["post_attention_layernorm"]), checked_norms
        )
        carry = (
            carry_allowed
            and add_norm
            and _add_norm_checked(library, cast(object, module["input_layernorm"]), checked_norms)
        )
        join = join_allowed and qkv_joinable(cast(nn.Module, module["self_attn"]))
        if not add_norm and not join:
            kept.append((path, "no q/k/v to join and no fused norm to add into"))
            continue
        twin = FusedLlamaBlock(library, module, join, add_norm, carry)
        hidden_size = cast(mx.array, cast(nn.Module, module["input_layernorm"])["weight"]).shape[0]
        if not same_block_results(module, twin, hidden_size):
            kept.append((path, "its fused output differs from mlx-lm's block"))
            continue
        set_module(model, path, twin)
        fused.append(path)
        if join:
            joined.append(path)
        if twin.carries_residual:
            carrying.append(path)
    evaluate(model.parameters())
    for reason in sorted({reason for _, reason in kept}):
        paths = [path for path, why in kept if why == reason]
        logger.warning("%d llama blocks stay mlx-lm's (%s), e.g. %s", len(paths), reason, paths[0])
    return FusedBlocks(tuple(fused), tuple(joined), tuple(kept), carrying_residual=tuple(carrying))
