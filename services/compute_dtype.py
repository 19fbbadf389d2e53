"""The dtype a model computes in, chosen per cluster: "stored" keeps the weights as imported.

On CPU with a fast BLAS, weights dequantized to float32 are the fast path (MLX's CPU quantized matmul
is naive; float32 matmuls run on OpenBLAS), at four bytes per parameter. Placement counts bytes in
this dtype, and the exactness reference converts its model the same way (`convert_module`).
"""

from typing import Literal, get_args

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.utils import dequantize_model

from services.mlx_typing import evaluate

ComputeDtype = Literal["stored", "float32", "float16", "bfloat16"]
COMPUTE_DTYPES: tuple[ComputeDtype, ...] = get_args(ComputeDtype)
_MLX_DTYPES: dict[ComputeDtype, mx.Dtype] = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
BYTES_PER_PARAMETER: dict[ComputeDtype, int] = {"float32": 4, "float16": 2, "bfloat16": 2}


def parse_compute_dtype(text: str) -> ComputeDtype:
    for name in COMPUTE_DTYPES:
        if text == name:
            return name
    raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {text!r}")


def default_compute_dtype() -> ComputeDtype:
    """float32 on a CPU (the fast BLAS path); the stored weights elsewhere."""
    return "float32" if mx.default_device() == mx.cpu else "stored"


def convert_module(module: nn.Module, dtype: ComputeDtype) -> nn.Module:
    """Dequantizes quantized layers and casts floating parameters to `dtype` (in place)."""
    if dtype == "stored":
        return module
    converted = dequantize_model(module)
    converted.set_dtype(_MLX_DTYPES[dtype])
    # One parameter at a time: evaluated together, the dequantized intermediates of every layer would
    # be alive at once, and that transient set the shard's peak memory.
    for _, array in tree_flatten(converted.parameters()):
        evaluate(array)
    return converted
