"""Tensors on the wire: dtype name, shape and raw little-endian bytes (no per-element encoding).

bfloat16 has no numpy dtype; it travels as its raw 16-bit patterns and is rebuilt with a bit view.
"""

from dataclasses import dataclass
from typing import Final, cast

import mlx.core as mx
import numpy as np

_NUMPY_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "int32": np.dtype("<i4"),
    "uint32": np.dtype("<u4"),
}
_MLX_DTYPES: Final[dict[str, mx.Dtype]] = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
    "int32": mx.int32,
    "uint32": mx.uint32,
}


class TensorDecodeError(ValueError):
    """The bytes do not describe a tensor of the announced dtype and shape."""


@dataclass(frozen=True)
class EncodedTensor:
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def dtype_name(dtype: mx.Dtype) -> str:
    for name, candidate in _MLX_DTYPES.items():
        if candidate == dtype:
            return name
    raise TensorDecodeError(f"dtype {dtype} cannot travel on the wire")


def encode(array: mx.array) -> EncodedTensor:
    name = dtype_name(array.dtype)
    if name == "bfloat16":
        array = array.view(mx.uint16)
    host = np.asarray(array, dtype=_NUMPY_DTYPES[name])
    return EncodedTensor(dtype=name, shape=tuple(array.shape), data=host.tobytes())


def decode(tensor: EncodedTensor, max_elements: int) -> mx.array:
    numpy_dtype = _NUMPY_DTYPES.get(tensor.dtype)
    if numpy_dtype is None:
        raise TensorDecodeError(f"unknown dtype {tensor.dtype!r}; expected one of {sorted(_NUMPY_DTYPES)}")
    if any(size < 0 for size in tensor.shape):
        raise TensorDecodeError(f"negative dimension in shape {tensor.shape}")
    elements = 1
    for size in tensor.shape:
        elements *= size
    if elements > max_elements:
        raise TensorDecodeError(f"tensor of {elements} elements exceeds the limit of {max_elements}")
    expected_bytes = elements * numpy_dtype.itemsize
    if len(tensor.data) != expected_bytes:
        raise TensorDecodeError(
            f"{len(tensor.data)} bytes for a {tensor.dtype} tensor of shape {tensor.shape}; expected {expected_bytes}"
        )
    host = np.frombuffer(tensor.data, dtype=numpy_dtype).reshape(tensor.shape)
    array = mx.array(cast("mx.DLPackCompatible", host))  # numpy arrays speak DLPack; the stub is narrower
    if tensor.dtype == "bfloat16":
        return array.view(mx.bfloat16)
    return array
