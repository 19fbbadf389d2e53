"""The dtype a model computes in, chosen per cluster: "stored" keeps the weights as imported.

On CPU with a fast BLAS, weights dequantized to float32 are the fast path (MLX's CPU quantized matmul
is naive; float32 matmuls run on OpenBLAS), at four bytes per parameter. Placement counts bytes in
this dtype; the conversion itself is MLX glue (`services.platform.mlx_compute`).
"""

import platform
import sys
from typing import Literal, get_args

ComputeDtype = Literal["stored", "float32", "float16", "bfloat16"]
COMPUTE_DTYPES: tuple[ComputeDtype, ...] = get_args(ComputeDtype)
BYTES_PER_PARAMETER: dict[ComputeDtype, int] = {"float32": 4, "float16": 2, "bfloat16": 2}


def parse_compute_dtype(text: str) -> ComputeDtype:
    for name in COMPUTE_DTYPES:
        if text == name:
            return name
    raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {text!r}")


def default_compute_dtype() -> ComputeDtype:
    """float32 where MLX computes on the CPU (the fast BLAS path); the stored weights on Apple silicon.

    Decided from the platform, not by asking MLX, so a coordinator on a host without MLX picks the same.
    """
    on_apple_silicon = sys.platform == "darwin" and platform.machine() == "arm64"
    return "stored" if on_apple_silicon else "float32"
