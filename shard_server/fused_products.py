"""A llama-form MLP's gate and up projections in one product of their concatenated float16 weights.

Each float16 product is one kernel call (a graph node, a dispatch, a wake of the kernel's threads);
one call over `[gate; up]` (2 * intermediate, hidden) does both, and the native `swiglu_halves`
reads the two halves of each output row. The kernel computes each output column from its weight
row alone (eight FMA lanes over K, a fixed sum tree), whatever the number of columns, so the halves
are the separate products' bits; `fused_ops.fuse_layer_ops` keeps a `FusedGateUpMLP` only where its
output equals the original MLP's bitwise on random rows. Opt-in (`STRATA_FUSED_PRODUCTS=on`): on this
project's shared 2-core host it measured within noise (0.97x of the MLP's time at one row, 1.00x at 16
and 32), so the default keeps two products until a quiet machine shows a gain.
"""

from collections.abc import Callable
from typing import Protocol, cast

import mlx.core as mx
from mlx import nn

from shard_server.compact_linear import Float16LinearLibrary
from shard_server.float16_weights import Float16Linear

PRODUCTS_SWITCH_VARIABLE = "STRATA_FUSED_PRODUCTS"
"""`on` (or `1`, `true`, `yes`) joins gate and up; otherwise they stay two products (the swiglu stays fused)."""


class GateUpLibrary(Float16LinearLibrary, Protocol):
    """The extension's float16 product and its swiglu over the two halves of each row."""

    def swiglu_halves(self, both: mx.array) -> mx.array: ...


def joinable(module: nn.Module) -> bool:
    """Whether an MLP's gate and up projections are float16 linear layers of one shape without biases."""
    if not all(name in module for name in ("gate_proj", "up_proj", "down_proj")):
        return False
    gate, up = cast(object, module["gate_proj"]), cast(object, module["up_proj"])
    if type(gate) is not Float16Linear or type(up) is not Float16Linear or "bias" in gate or "bias" in up:
        return False
    return cast(mx.array, gate["weight"]).shape == cast(mx.array, up["weight"]).shape


class FusedGateUpMLP(nn.Module):
    """`down_proj(swiglu(gate_proj(x), up_proj(x)))` with gate and up in one product, the swiglu in one op."""

    def __init__(self, library: GateUpLibrary, original: nn.Module) -> None:
        super().__init__()
        self._library = library
        gate = cast(mx.array, cast(nn.Module, original["gate_proj"])["weight"])
        up = cast(mx.array, cast(nn.Module, original["up_proj"])["weight"])
        self.gate_up_proj = Float16Linear(library, mx.concatenate([gate, up], axis=0), None)  # (2 * I, hidden)
        self.down_proj = cast(nn.Module, original["down_proj"])

    def __call__(self, x: mx.array) -> mx.array:
        both = cast(Callable[[mx.array], mx.array], self.gate_up_proj)(x)  # (..., 2 * I) float32
        return cast(Callable[[mx.array], mx.array], self.down_proj)(self._library.swiglu_halves(both))
