"""RoPE in one native op, bitwise as MLX's CPU fallback of `mx.fast.rope` computes it.

MLX's CPU wheel has no RoPE kernel: `mx.fast.rope` composes ~15 ops (positions, frequencies, cos,
sin, four products, a sum, a difference, slices and a concatenation), twice per attention. The
extension's `rope` (`native/float16_linear/fused_rope.cpp`) does the same arithmetic in one op, with
each row at its own position (an int32 vector offset, as `batched_forward` passes) or all rows from
one (a scalar, as prefill passes). `fuse_ropes` swaps `nn.RoPE` and mlx-lm's `Llama3RoPE` for a
`FusedRoPE` only where the twin's output equals the original's bitwise on random heads (one or many
rows, decode and prefill shapes, positions up to ~2^24); other RoPE forms (SuScaled, Yarn: they
scale x first) stay on MLX with one log line. `STRATA_FUSED_ROPE=off` keeps MLX's RoPE.
"""

from collections.abc import Sequence
from typing import Protocol, cast

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx_lm.models.rope_utils import Llama3RoPE

from services.platform.mlx_typing import evaluate

ROPE_SWITCH_VARIABLE = "STRATA_FUSED_ROPE"
"""`off` (or `0`, `false`, `no`) keeps MLX's RoPE while the other fused ops stay on."""

_CHECK_ROWS = (1, 7, 33)
_CHECK_HEADS = 3
_CHECK_LARGE_POSITIONS = (8_388_607, 8_388_609, 9_000_001, 16_000_000)
"""Positions past 2^23, where MLX's sin and cos leave their polynomials for libm's."""


class FusedRopeLibrary(Protocol):
    """The extension's RoPE (its C++ checks dtypes and shapes and raises ValueError)."""

    def rope(
        self,
        x: mx.array,
        offset: mx.array,
        inverse_frequencies: mx.array,
        dims: int,
        traditional: bool,
        scale: float,
    ) -> mx.array: ...

    def rope_inverse_frequencies(self, dims: int, base: float) -> mx.array: ...


class _Rope(Protocol):
    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array: ...


class FusedRoPE(nn.Module):
    """`mx.fast.rope(x, dims, traditional, base or freqs, scale, offset)` in one native op (float32 x)."""

    def __init__(
        self,
        library: FusedRopeLibrary,
        dims: int,
        traditional: bool,
        scale: float,
        base: float | None,
        frequencies: mx.array | None,
    ) -> None:
        super().__init__()
        self._library = library
        self.dims = dims
        self.traditional = traditional
        self.scale = scale
        self.base = base
        # Underscored arrays are no parameters (as Llama3RoPE's `_freqs`): nothing to load or count.
        self._frequencies = frequencies
        # What the fallback computes on every call, once: MLX's own ops on the same constants.
        self._inverse_frequencies = (
            mx.reciprocal(frequencies.astype(mx.float32))
            if frequencies is not None
            else library.rope_inverse_frequencies(dims, cast(float, base))
        )
        evaluate(self._inverse_frequencies)

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        positions = offset if isinstance(offset, mx.array) else mx.array(offset, dtype=mx.int32)
        if x.dtype != mx.float32 or positions.dtype != mx.int32:
            # Other dtypes round cos and sin to x's dtype first: MLX's own op.
            return mx.fast.rope(
                x,
                self.dims,
                traditional=self.traditional,
                base=self.base,
                scale=self.scale,
                offset=offset,
                freqs=self._frequencies,
            )
        return self._library.rope(x, positions, self._inverse_frequencies, self.dims, self.traditional, self.scale)


def is_rope(module: nn.Module) -> bool:
    """Whether a module is a rotary embedding of any form (fused or not: to say which are kept)."""
    return "rope" in type(module).__name__.lower() and not isinstance(module, FusedRoPE)


def fused_twin(library: FusedRopeLibrary, module: nn.Module) -> FusedRoPE | None:
    """A `FusedRoPE` computing as `module` does, for the forms that are one plain `mx.fast.rope` call."""
    if type(module) is nn.RoPE:
        return FusedRoPE(library, module.dims, module.traditional, module.scale, module.base, None)
    if type(module) is Llama3RoPE:
        frequencies = module._freqs  # pyright: ignore[reportPrivateUsage]
        return FusedRoPE(library, module.dims, module.traditional, 1.0, None, frequencies)
    return None


def _offsets(rows: int, seed: int) -> Sequence[int | mx.array]:
    """A scalar offset (prefill's) and one position per row (batched decode's), some past 2^23."""
    generator = np.random.default_rng(seed)
    positions = generator.integers(0, 1 << 24, rows).astype(np.int32)
    positions[: min(rows, len(_CHECK_LARGE_POSITIONS))] = _CHECK_LARGE_POSITIONS[:rows]
    return (0, 37, 70_001, mx.array(positions))


def same_rotations(original: nn.Module, twin: FusedRoPE) -> bool:
    """Whether both give bitwise the same output on random float32 heads: decode and prefill shapes,
    scalar and per-row offsets, heads of exactly `dims` and with dimensions past it."""
    original_rope, twin_rope = cast(_Rope, original), cast(_Rope, twin)
    for size in (twin.dims, twin.dims + 8):
        for rows in _CHECK_ROWS:
            for offset in _offsets(rows, seed=rows * 31 + size):
                per_row = isinstance(offset, mx.array)
                # (rows, heads, 1, size) for a batch of decode rows; (1, heads, rows, size) for a prefill.
                shape = (rows, _CHECK_HEADS, 1, size) if per_row else (1, _CHECK_HEADS, rows, size)
                x = mx.random.normal(shape, key=mx.random.key(rows * 7919 + size)) * 4.0
                if not mx.array_equal(original_rope(x, offset=offset), twin_rope(x, offset=offset)).item():
                    return False
    return True
