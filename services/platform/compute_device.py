"""The device a shard computes on (Metal, CUDA or the CPU), its memory, and how fast it reads weights.

MLX picks its default device by itself (the GPU of its build where there is one); this module asks it
which one that is, so a shard reports what it really runs on. The speed is measured once at start
with a decode-like product (one row times a weight matrix, which reads every weight once, as a decode
step does), in parameters per second: placement divides each stage's work (parameters read per token)
by it, so a fast GPU takes most of the layers of a mixed cluster and a CPU host adds memory.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass

import mlx.core as mx

from services.kernel.compute_dtype import ComputeDtype, device_compute_dtype
from services.kernel.devices import DeviceKind
from services.platform.mlx_typing import evaluate

# A product the size of a small model's MLP projection: large enough to be memory-bound, small enough
# (8 Mi parameters) to measure in a few milliseconds on a CPU.
_PROBE_ROWS_IN = 2048
_PROBE_ROWS_OUT = 4096
_PROBE_REPEATS = 7


@dataclass(frozen=True)
class ComputeDevice:
    kind: DeviceKind
    name: str
    memory_bytes: int | None
    """Memory of the device itself (a CUDA GPU's); None where the device computes in host memory."""
    cuda_compute_capability_major: int | None = None
    """A CUDA GPU's compute capability (8 for sm_80); None elsewhere or where MLX does not say."""

    @property
    def auto_compute_dtype(self) -> ComputeDtype:
        """What compute dtype "auto" means on this device (see `device_compute_dtype`)."""
        return device_compute_dtype(self.kind, self.cuda_compute_capability_major)


def describe_device(kind: DeviceKind, info: Mapping[str, object]) -> ComputeDevice:
    """Pure: the device from MLX's `device_info()` (whose keys differ between backends)."""
    name = info.get("device_name")
    memory = info.get("memory_size", info.get("total_memory"))
    device_memory = memory if kind == "cuda" and isinstance(memory, int) and memory > 0 else None
    major = info.get("compute_capability_major")
    capability = major if kind == "cuda" and isinstance(major, int) and major > 0 else None
    return ComputeDevice(kind, name if isinstance(name, str) and name else kind, device_memory, capability)


def detect_compute_device() -> ComputeDevice:
    """The device MLX computes on in this process."""
    if mx.metal.is_available():
        kind: DeviceKind = "metal"
    elif mx.cuda.is_available():
        kind = "cuda"
    else:
        kind = "cpu"
    info: Mapping[str, object] = mx.device_info()
    return describe_device(kind, info)


def offered_device_memory(device: ComputeDevice, host_offer: int, headroom: float) -> int:
    """Pure: what a shard may fill with weights and KV cache: a CUDA GPU's own memory (less the same
    headroom share the host keeps), else what the host offers (Metal and the CPU compute in host memory)."""
    if device.memory_bytes is None:
        return host_offer
    return int(device.memory_bytes * headroom)


_PROBE_DTYPES: dict[ComputeDtype, mx.Dtype] = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def measure_work_per_second(device: ComputeDevice) -> float:
    """Parameters read per second in a one-row product in the device's "auto" dtype, from the fastest
    of a few runs (other processes only ever slow a run down), 0.0 if it cannot be timed."""
    dtype = _PROBE_DTYPES.get(device.auto_compute_dtype, mx.float32)
    weights = mx.random.normal((_PROBE_ROWS_OUT, _PROBE_ROWS_IN), key=mx.random.key(0)).astype(dtype)
    row = mx.random.normal((1, _PROBE_ROWS_IN), key=mx.random.key(1)).astype(dtype)
    evaluate(weights, row)
    evaluate(row @ weights.T)  # warm-up: the first product pays for its kernel's set-up
    durations: list[float] = []
    for _ in range(_PROBE_REPEATS):
        started = time.perf_counter()
        evaluate(row @ weights.T)
        durations.append(time.perf_counter() - started)
    fastest = min(durations)
    return _PROBE_ROWS_IN * _PROBE_ROWS_OUT / fastest if fastest > 0 else 0.0
