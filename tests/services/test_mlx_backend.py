"""Which MLX build `make` installs, from what `nvidia-smi` reports (services/platform/mlx_backend.py)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.platform.mlx_backend import choose_mlx_backend

SCRIPT = Path(__file__).resolve().parents[2] / "services" / "platform" / "mlx_backend.py"

# The header of `nvidia-smi` on a host with one GPU (driver 550, CUDA 12.4).
NVIDIA_SMI_CUDA_12 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.90.07              Driver Version: 550.90.07      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA H200                    On  |   00000000:19:00.0 Off |                    0 |
"""


@pytest.mark.unit
def test_no_nvidia_smi_means_the_cpu_build() -> None:
    choice = choose_mlx_backend("Linux", None)
    assert (choice.backend, choice.extra) == ("cpu", "cpu")
    assert "no NVIDIA GPU" in choice.reason


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cuda_version", "backend"),
    [("12.4", "cuda12"), ("12.0", "cuda12"), ("13.0", "cuda13"), ("13.2", "cuda13"), ("14.1", "cuda13")],
)
def test_the_cuda_build_follows_the_drivers_major_version(cuda_version: str, backend: str) -> None:
    report = NVIDIA_SMI_CUDA_12.replace("CUDA Version: 12.4", f"CUDA Version: {cuda_version}")
    assert choose_mlx_backend("Linux", report).backend == backend


@pytest.mark.unit
def test_a_driver_older_than_cuda_12_gets_the_cpu_build_and_says_why() -> None:
    report = NVIDIA_SMI_CUDA_12.replace("CUDA Version: 12.4", "CUDA Version: 11.8")
    choice = choose_mlx_backend("Linux", report)
    assert choice.backend == "cpu"
    assert "CUDA 11.8" in choice.reason
    assert "update the driver" in choice.reason


@pytest.mark.unit
def test_a_report_without_a_cuda_version_gets_the_cpu_build() -> None:
    choice = choose_mlx_backend("Linux", "No devices were found\n")
    assert choice.backend == "cpu"


@pytest.mark.unit
def test_macos_needs_no_extra() -> None:
    choice = choose_mlx_backend("Darwin", None)
    assert (choice.backend, choice.extra) == ("metal", "")


@pytest.mark.unit
def test_the_override_wins_and_a_bad_one_is_refused() -> None:
    assert choose_mlx_backend("Linux", None, override="cuda13").backend == "cuda13"
    assert choose_mlx_backend("Linux", NVIDIA_SMI_CUDA_12, override="CPU").backend == "cpu"
    with pytest.raises(ValueError, match="STRATA_MLX_BACKEND must be one of"):
        choose_mlx_backend("Linux", None, override="rocm")


def _run_script(
    tmp_path: Path, nvidia_smi_body: str | None, override: str | None = None
) -> "subprocess.CompletedProcess[str]":
    """Runs the script as `make` does (system Python, before any install), with a stand-in `nvidia-smi`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    if nvidia_smi_body is not None:
        stand_in = bin_dir / "nvidia-smi"
        stand_in.write_text(f"#!/bin/sh\n{nvidia_smi_body}\n")
        stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    environment = {key: value for key, value in os.environ.items() if key != "STRATA_MLX_BACKEND"}
    environment["PATH"] = str(bin_dir)
    if override is not None:
        environment["STRATA_MLX_BACKEND"] = override
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT)], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


@pytest.mark.process
@pytest.mark.timeout(120)
def test_the_script_make_runs_prints_the_extra_for_what_nvidia_smi_reports(tmp_path: Path) -> None:
    report_file = tmp_path / "report.txt"
    report_file.write_text(NVIDIA_SMI_CUDA_12)
    with_gpu = _run_script(tmp_path / "gpu", f"exec /bin/cat {report_file}")
    assert (with_gpu.returncode, with_gpu.stdout) == (0, "cuda12\n"), with_gpu.stderr
    assert "CUDA 12.4" in with_gpu.stderr
    failing = _run_script(tmp_path / "failing", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert (failing.returncode, failing.stdout) == (0, "cpu\n")
    missing = _run_script(tmp_path / "missing", None)
    assert (missing.returncode, missing.stdout) == (0, "cpu\n")
    refused = _run_script(tmp_path / "bad", None, override="rocm")
    assert refused.returncode == 2
    assert "STRATA_MLX_BACKEND must be one of" in refused.stderr
