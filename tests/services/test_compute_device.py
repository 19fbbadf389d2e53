"""The device a shard reports: its kind, its memory and its measured speed (services/platform/compute_device.py)."""

import pytest

from services.kernel.devices import parse_device_kind
from services.platform.compute_device import (
    ComputeDevice,
    describe_device,
    detect_compute_device,
    measure_work_per_second,
    offered_device_memory,
)


@pytest.mark.unit
def test_device_names_and_the_old_gpu_alias() -> None:
    assert [parse_device_kind(name) for name in ("cpu", "cuda", "metal", "gpu", "tpu", "")] == [
        "cpu",
        "cuda",
        "metal",
        "cuda",
        None,
        None,
    ]


@pytest.mark.unit
def test_a_cuda_gpu_reports_its_own_memory() -> None:
    device = describe_device("cuda", {"device_name": "NVIDIA H200", "total_memory": 150_000_000_000})
    assert device == ComputeDevice("cuda", "NVIDIA H200", 150_000_000_000)
    assert offered_device_memory(device, host_offer=40_000_000_000, headroom=0.85) == 127_500_000_000


@pytest.mark.unit
def test_metal_and_the_cpu_compute_in_host_memory() -> None:
    metal = describe_device("metal", {"device_name": "Apple M3", "memory_size": 36_000_000_000})
    cpu = describe_device("cpu", {"architecture": "x86_64", "device_name": "AMD EPYC"})
    assert (metal.memory_bytes, cpu.memory_bytes) == (None, None)
    assert offered_device_memory(metal, host_offer=30_000, headroom=0.85) == 30_000
    assert offered_device_memory(cpu, host_offer=20_000, headroom=0.85) == 20_000
    assert describe_device("cpu", {}).name == "cpu"


@pytest.mark.unit
def test_gpus_compute_in_bfloat16_and_the_cpu_in_float32() -> None:
    devices = [describe_device(kind, {}) for kind in ("cpu", "cuda", "metal")]
    assert [device.auto_compute_dtype for device in devices] == ["float32", "bfloat16", "bfloat16"]


@pytest.mark.unit
def test_a_cuda_gpu_before_sm_80_computes_in_float16() -> None:
    """MLX's CUDA wheels run from sm_75 (Turing), whose cuBLASLt has no bfloat16 matmul."""
    turing = describe_device("cuda", {"device_name": "Tesla T4", "compute_capability_major": 7})
    ampere = describe_device("cuda", {"device_name": "NVIDIA A100", "compute_capability_major": 8})
    hopper = describe_device("cuda", {"device_name": "NVIDIA H200", "compute_capability_major": 9})
    assert (turing.cuda_compute_capability_major, turing.auto_compute_dtype) == (7, "float16")
    assert (ampere.auto_compute_dtype, hopper.auto_compute_dtype) == ("bfloat16", "bfloat16")
    # Metal reports no compute capability; a CPU's number (were there one) is not a CUDA one.
    assert describe_device("cpu", {"compute_capability_major": 7}).auto_compute_dtype == "float32"


@pytest.mark.model
@pytest.mark.timeout(120)
def test_this_machine_computes_on_the_cpu_and_measures_a_speed() -> None:
    device = detect_compute_device()
    assert device.kind == "cpu"
    assert device.memory_bytes is None
    assert measure_work_per_second(device) > 1e6
