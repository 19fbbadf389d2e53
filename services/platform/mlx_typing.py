"""Typed doors into the few MLX functions whose own stubs leave parameters unannotated.

Strict type checking rejects calls to partially unknown functions; rather than loosening the
checker everywhere, these wrappers fix the types once, at the boundary.
"""

from collections.abc import Callable
from typing import Any, TypeVar, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import numpy.typing as npt

_evaluate = cast(Callable[..., None], getattr(mx, "eval"))  # noqa: B009 - its stub is unannotated
_evaluate_async = cast(Callable[..., None], getattr(mx, "async_eval"))  # noqa: B009
_quantize = cast(Callable[..., None], getattr(nn, "quantize"))  # noqa: B009

_Scalar = TypeVar("_Scalar", int, bool, float)


def evaluate(*arrays_or_trees: Any) -> None:
    """Computes the given arrays (or trees of arrays) now."""
    _evaluate(*arrays_or_trees)


def start_evaluating(*arrays_or_trees: Any) -> None:
    """Starts computing the given arrays (or trees of arrays) and returns at once."""
    _evaluate_async(*arrays_or_trees)


def quantize_module(
    module: nn.Module,
    group_size: int,
    bits: int,
    class_predicate: Callable[[str, nn.Module], bool | dict[str, int]],
) -> None:
    _quantize(module, group_size=group_size, bits=bits, class_predicate=class_predicate)


def embedding_as_linear(embedding: nn.Module, hidden: mx.array) -> mx.array:
    """Tied LM head: the embedding matrix used as the output projection."""
    as_linear = cast(Callable[[mx.array], mx.array], getattr(embedding, "as_linear"))  # noqa: B009
    return as_linear(hidden)


def scalar_int(array: mx.array) -> int:
    value = array.item()
    if not isinstance(value, int):
        raise TypeError(f"expected an integer scalar, got {type(value).__name__}")
    return value


def _values_of(array: mx.array, kind: type[_Scalar]) -> list[_Scalar]:
    values = array.tolist()
    checked = [value for value in values if isinstance(value, kind)] if isinstance(values, list) else []
    if not isinstance(values, list) or len(checked) != len(values):
        raise TypeError(f"expected a one-dimensional array of {kind.__name__}")
    return checked


def to_int_list(array: mx.array) -> list[int]:
    """A one-dimensional integer array's values."""
    return _values_of(array, int)


def to_bool_list(array: mx.array) -> list[bool]:
    """A one-dimensional boolean array's values."""
    return _values_of(array, bool)


def to_float_list(array: mx.array) -> list[float]:
    """A one-dimensional floating-point array's values (float32 values are exact as Python floats)."""
    return _values_of(array, float)


def float32_bytes(array: mx.array) -> bytes:
    """A float32 array's elements as raw little-endian bytes (bit for bit)."""
    values = cast(npt.NDArray[np.float32], np.array(array.astype(mx.float32), copy=False))
    return values.astype("<f4", copy=False).tobytes()


def load_module_weights(module: nn.Module, weights: list[tuple[str, mx.array]]) -> None:
    """Sets the named parameters; the caller has checked that they are exactly the module's."""
    load = cast(Callable[..., object], getattr(module, "load_weights"))  # noqa: B009
    load(weights, strict=False)
