"""What the compactly held linear layers share: the extension's functions, their base class, the load check.

The extension (`native/float16_linear/`) computes x * W^T in float32 exactly as the BLAS shim's
kernel does, reading W as float16 values (`float16_weights.py`) or as the 4- or 8-bit codes they
were dequantized from (`weight_codes.py`). A module holding weights that way replaces a float32
module only after `same_results` found their outputs bitwise equal.
"""

from collections.abc import Callable
from typing import Protocol, cast

import mlx.core as mx
from mlx import nn

CHECK_ROWS = (1, 7, 33)
"""Row counts of the load check: one decode row, and counts that take every tile shape of the kernel."""


class Float16LinearLibrary(Protocol):
    """The extension's functions (its C++ checks shapes and dtypes and raises ValueError)."""

    def float16_linear(self, x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array: ...

    def quantized_codes_linear(
        self,
        x: mx.array,
        codes: mx.array,
        scales: mx.array,
        biases: mx.array,
        group_size: int,
        bits: int,
        bias: mx.array | None = None,
    ) -> mx.array: ...

    def kernel_available(self) -> bool: ...

    def kernel_width(self) -> int: ...


class CompactLinear(nn.Module):
    """A linear layer whose weights are held in fewer bytes than float32: float32 in, float32 out."""


def same_results(original: Callable[[mx.array], mx.array], twin: Callable[[mx.array], mx.array], inputs: int) -> bool:
    """Whether both give bitwise the same output on random float32 rows (`CHECK_ROWS` of them)."""
    for rows in CHECK_ROWS:
        x = mx.random.normal((1, rows, inputs), key=mx.random.key(rows * 7919 + inputs))
        if not mx.array_equal(original(x), twin(x)).item():
            return False
    return True


def lookups_equal(original: nn.Module, twin: Callable[[mx.array], mx.array], vocabulary: int) -> bool:
    """Whether an embedding twin looks up bitwise the rows the original does (every 97th-or-so id)."""
    ids = mx.arange(0, vocabulary, max(1, vocabulary // 97))
    lookup = cast(Callable[[mx.array], mx.array], original)
    return bool(mx.array_equal(lookup(ids), twin(ids)).item())
