"""Computing in a chosen dtype with MLX: converting a model to it.

The exactness reference converts its model the same way a shard does (`convert_module`).
"""

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.utils import dequantize_model

from services.kernel.compute_dtype import ComputeDtype
from services.platform.mlx_typing import evaluate

_MLX_DTYPES: dict[ComputeDtype, mx.Dtype] = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


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
