"""Which build of MLX `make` installs: the CPU build, or the CUDA build that matches the NVIDIA driver.

The CPU wheel (`mlx-cpu`) and the CUDA wheels (`mlx-cuda-12`, `mlx-cuda-13`) all install
`mlx/lib/libmlx.so`, so exactly one of them may be in an environment: strata declares each as an
extra (`strata[cpu]`, `strata[cuda12]`, `strata[cuda13]`) and `make` picks one with this module,
before any dependency is installed (standard library only; run as `python3 services/platform/mlx_backend.py`).

The choice follows what `nvidia-smi` reports: no `nvidia-smi`, or one that fails, means no usable
GPU and the CPU build; a driver whose "CUDA Version" is 12.x gets the CUDA 12 build, 13 or later the
CUDA 13 build (a driver runs code built for its own major version and older ones); a driver older
than CUDA 12 cannot run MLX's CUDA build and gets the CPU build, with a message saying so. macOS
needs no extra (`mlx` brings Metal there). `STRATA_MLX_BACKEND=cpu|cuda12|cuda13` overrides it.
"""

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

MlxBackend = Literal["cpu", "cuda12", "cuda13", "metal"]
_OVERRIDES: dict[str, MlxBackend] = {"cpu": "cpu", "cuda12": "cuda12", "cuda13": "cuda13", "metal": "metal"}
_CUDA_VERSION = re.compile(r"CUDA Version:\s*(\d+)\.(\d+)")
_NVIDIA_SMI_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class BackendChoice:
    backend: MlxBackend
    reason: str

    @property
    def extra(self) -> str:
        """The pip extra of strata that installs this backend ("" on macOS: `mlx` brings Metal)."""
        return "" if self.backend == "metal" else self.backend


def choose_mlx_backend(system: str, nvidia_smi_output: str | None, override: str | None = None) -> BackendChoice:
    """Pure: the backend for a host from its OS (`platform.system()`) and `nvidia-smi`'s output.

    `nvidia_smi_output` is None where `nvidia-smi` is missing or failed.
    """
    if override:
        overridden = _OVERRIDES.get(override.strip().lower())
        if overridden is None:
            choices = ", ".join(_OVERRIDES)
            raise ValueError(f"STRATA_MLX_BACKEND must be one of {choices}; got {override!r}")
        return BackendChoice(overridden, f"STRATA_MLX_BACKEND={override} asks for it")
    if system == "Darwin":
        return BackendChoice("metal", "macOS: mlx runs on Metal (Apple silicon) or the CPU")
    if nvidia_smi_output is None:
        return BackendChoice("cpu", "no NVIDIA GPU found (no working nvidia-smi): installing the CPU build of MLX")
    match = _CUDA_VERSION.search(nvidia_smi_output)
    if match is None:
        return BackendChoice(
            "cpu", "nvidia-smi reports no CUDA version (no GPU or no driver loaded): installing the CPU build of MLX"
        )
    major, minor = int(match.group(1)), int(match.group(2))
    if major < 12:
        return BackendChoice(
            "cpu",
            f"the NVIDIA driver supports CUDA {major}.{minor}, and MLX's CUDA build needs CUDA 12 or later: "
            "installing the CPU build of MLX (update the driver to use the GPU)",
        )
    backend: MlxBackend = "cuda12" if major == 12 else "cuda13"
    return BackendChoice(backend, f"NVIDIA driver with CUDA {major}.{minor}: installing MLX's CUDA {backend[4:]} build")


def command_output(command: list[str], timeout_seconds: float) -> str | None:
    """A command's standard output, or None where it is missing, fails or hangs past the timeout."""
    executable = shutil.which(command[0])
    if executable is None:
        return None
    try:
        completed = subprocess.run(
            [executable, *command[1:]], capture_output=True, text=True, timeout=timeout_seconds, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout if completed.returncode == 0 else None


def read_nvidia_smi() -> str | None:
    """`nvidia-smi`'s report, or None where it is missing, fails or hangs."""
    return command_output(["nvidia-smi"], _NVIDIA_SMI_TIMEOUT_SECONDS)


def main() -> int:
    """Prints the extra to install on stdout (empty on macOS) and why on stderr."""
    try:
        choice = choose_mlx_backend(platform.system(), read_nvidia_smi(), os.environ.get("STRATA_MLX_BACKEND"))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"mlx backend: {choice.backend} ({choice.reason})", file=sys.stderr)
    print(choice.extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
