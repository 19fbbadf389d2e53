"""The dtype a model computes in: one for the cluster, or "auto", which each shard resolves for its device.

On CPU with a fast BLAS, weights dequantized to float32 are the fast path (MLX's CPU quantized matmul
is naive; float32 matmuls run on OpenBLAS), at four bytes per parameter. GPUs (CUDA, Metal) compute in
bfloat16, whose products run several times faster than float32's there; a CUDA GPU older than compute
capability 8.0 (Turing, the oldest MLX's CUDA wheels are built for) has no bfloat16 matmul in cuBLASLt
and gets float16 instead, of the same two bytes. Placement counts bytes in each shard's own dtype; the
conversion itself is MLX glue (`services.platform.mlx_compute`).
"""

import platform
import sys
from typing import Literal, get_args

from services.kernel.devices import DeviceKind

ComputeDtype = Literal["stored", "float32", "float16", "bfloat16"]
COMPUTE_DTYPES: tuple[ComputeDtype, ...] = get_args(ComputeDtype)
ComputeDtypeChoice = ComputeDtype | Literal["auto"]
"""What a coordinator is told: one dtype for every shard, or "auto": each shard's device decides."""
AUTO_DTYPE: Literal["auto"] = "auto"
BYTES_PER_PARAMETER: dict[ComputeDtype, int] = {"float32": 4, "float16": 2, "bfloat16": 2}
AUTO_BYTES_PER_PARAMETER: dict[DeviceKind, int] = {"cpu": 4, "cuda": 2, "metal": 2}
"""What "auto" holds per parameter on each device (bfloat16 and float16 both take two bytes)."""
_FIRST_CUDA_MAJOR_WITH_BFLOAT16_MATMUL = 8


def parse_compute_dtype(text: str) -> ComputeDtype:
    for name in COMPUTE_DTYPES:
        if text == name:
            return name
    raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {text!r}")


def parse_compute_dtype_choice(text: str) -> ComputeDtypeChoice:
    """A dtype, or "auto"; ValueError naming the choices otherwise."""
    if text == AUTO_DTYPE:
        return AUTO_DTYPE
    try:
        return parse_compute_dtype(text)
    except ValueError:
        raise ValueError(f"compute dtype must be auto or one of {', '.join(COMPUTE_DTYPES)}; got {text!r}") from None


def device_compute_dtype(device: DeviceKind, cuda_compute_capability_major: int | None = None) -> ComputeDtype:
    """Pure: what "auto" computes in on a device: float32 on the CPU; bfloat16 on Metal and on CUDA
    GPUs of compute capability 8.0 or later (or unknown), float16 on older CUDA GPUs."""
    if device == "cpu":
        return "float32"
    if (
        device == "cuda"
        and cuda_compute_capability_major is not None
        and cuda_compute_capability_major < _FIRST_CUDA_MAJOR_WITH_BFLOAT16_MATMUL
    ):
        return "float16"
    return "bfloat16"


def default_compute_dtype() -> ComputeDtype:
    """float32 where MLX computes on the CPU (the fast BLAS path); the stored weights on Apple silicon.

    Decided from the platform, not by asking MLX, so a coordinator on a host without MLX picks the same.
    """
    on_apple_silicon = sys.platform == "darwin" and platform.machine() == "arm64"
    return "stored" if on_apple_silicon else "float32"
