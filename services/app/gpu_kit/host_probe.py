"""What a borrowed NVIDIA machine already has for MLX's CUDA build, so only what is missing is carried.

`libmlx.so` of `mlx-cuda-12`/`mlx-cuda-13` needs the driver's `libcuda.so.1` and CUDA's libraries
(cuBLASLt, cuFFT, cuSOLVER, NVRTC, cuDNN, NCCL); its RPATH looks for them only beside itself in
`site-packages/nvidia/*/lib`, which a `--target` install does not have. The probe reads
`nvidia-smi` (the driver's CUDA version picks the wheel, as `make` does), `ldconfig -p`, and the
`nvidia/*/lib` folders of the host's Python environments, and says per library where it is (so
`LD_LIBRARY_PATH` can name those folders) or which NVIDIA wheel would bring it. Pure parsing, tested
with recorded outputs; `main` runs the commands (standard library only).

    python3 -m services.app.gpu_kit.host_probe [--json FILE] [--env FILE]
"""

import argparse
import glob
import json
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from services.platform.mlx_backend import choose_mlx_backend, command_output

# soname -> the wheel that brings it, per CUDA major version (mlx-cuda-12/13's own requirements).
REQUIRED_LIBRARIES: dict[str, dict[str, str]] = {
    "cuda12": {
        "libcublasLt.so.12": "nvidia-cublas-cu12",
        "libcufft.so.11": "nvidia-cufft-cu12",
        "libcusolver.so.11": "nvidia-cusolver-cu12",
        "libnvrtc.so.12": "nvidia-cuda-nvrtc-cu12",
        "libcudnn.so.9": "nvidia-cudnn-cu12",
        "libnccl.so.2": "nvidia-nccl-cu12",
    },
    "cuda13": {
        "libcublasLt.so.13": "nvidia-cublas",
        "libcufft.so.12": "nvidia-cufft",
        "libcusolver.so.12": "nvidia-cusolver",
        "libnvrtc.so.13": "nvidia-cuda-nvrtc",
        "libcudart.so.13": "nvidia-cuda-runtime",
        "libcudnn.so.9": "nvidia-cudnn-cu13",
        "libnccl.so.2": "nvidia-nccl-cu13",
    },
}
DRIVER_LIBRARY = "libcuda.so.1"
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")
_COMMAND_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class HostProbe:
    backend: str
    """"cuda12", "cuda13" or "cpu" (no usable driver), chosen as `make` chooses."""
    reason: str
    python: str
    found: dict[str, str]
    """soname -> the folder holding it."""
    missing: dict[str, str]
    """soname -> the NVIDIA wheel that would bring it."""
    driver_found: bool

    @property
    def library_path(self) -> str:
        """The folders to put on LD_LIBRARY_PATH, each once, in a fixed order."""
        return ":".join(sorted(set(self.found.values())))


def parse_ldconfig(output: str) -> dict[str, str]:
    """Pure: soname -> folder from `ldconfig -p` (x86-64 entries; the first listed wins, as the loader's)."""
    libraries: dict[str, str] = {}
    for line in output.splitlines():
        match = _LDCONFIG_LINE.match(line)
        if match is None or "x86-64" not in match.group(2):
            continue
        name, path = match.group(1), match.group(3)
        libraries.setdefault(name, str(Path(path).parent))
    return libraries


def libraries_in_folders(file_names_by_folder: dict[str, list[str]]) -> dict[str, str]:
    """Pure: soname -> folder from the file names of folders (e.g. site-packages/nvidia/*/lib)."""
    libraries: dict[str, str] = {}
    for folder in sorted(file_names_by_folder):
        for name in file_names_by_folder[folder]:
            libraries.setdefault(name, folder)
    return libraries


def probe_from(
    nvidia_smi_output: str | None,
    ldconfig_output: str,
    python_folders: dict[str, list[str]],
    python: str,
    override: str | None = None,
) -> HostProbe:
    """Pure: the probe from what the commands printed; libraries in Python folders win over the
    system's (they are the versions the wheels were built against)."""
    choice = choose_mlx_backend("Linux", nvidia_smi_output, override)
    system = parse_ldconfig(ldconfig_output)
    known = {**system, **libraries_in_folders(python_folders)}
    required = REQUIRED_LIBRARIES.get(choice.backend, {})
    found = {name: known[name] for name in required if name in known}
    missing = {name: wheel for name, wheel in required.items() if name not in known}
    return HostProbe(choice.backend, choice.reason, python, found, missing, DRIVER_LIBRARY in known)


def _python_library_folders() -> dict[str, list[str]]:
    """The `nvidia/*/lib` folders of every Python environment this host's interpreters know."""
    patterns = [
        "/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib",
        "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
        "/usr/lib/python3/dist-packages/nvidia/*/lib",
        *(f"{entry}/nvidia/*/lib" for entry in sys.path if entry.endswith("-packages")),
    ]
    folders: dict[str, list[str]] = {}
    for pattern in patterns:
        for folder in glob.glob(pattern):
            folders[folder] = sorted(os.listdir(folder))
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m services.app.gpu_kit.host_probe")
    parser.add_argument("--json", type=Path, help="write the probe as JSON here")
    parser.add_argument("--env", type=Path, help="write `export LD_LIBRARY_PATH=...` here, for `source`")
    arguments = parser.parse_args(argv)
    probe = probe_from(
        command_output(["nvidia-smi"], _COMMAND_TIMEOUT_SECONDS),
        command_output(["ldconfig", "-p"], _COMMAND_TIMEOUT_SECONDS) or "",
        _python_library_folders(),
        f"{platform.python_implementation()} {platform.python_version()} at {sys.executable}",
        os.environ.get("STRATA_MLX_BACKEND"),
    )
    report = {**asdict(probe), "library_path": probe.library_path}
    print(json.dumps(report, indent=1))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(report, indent=1))
    if arguments.env is not None:
        arguments.env.write_text(f'export LD_LIBRARY_PATH="{probe.library_path}:${{LD_LIBRARY_PATH:-}}"\n')
    if probe.missing:
        print("missing (carry these wheels): " + ", ".join(sorted(set(probe.missing.values()))), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
