"""The wheels a GPU run needs on a host without a package registry: the whole dependency closure of
strata with MLX's CUDA build, for CPython 3.12 on manylinux x86_64, and which of it to carry.

`download` asks pip (here, where the registry is) for the closure of the project's dependencies and
its `cuda13` extra, for the device's interpreter and platforms (pip resolves for another interpreter
when it only takes wheels). Not all of it is carried: the borrowed H200's image already holds
NVIDIA's CUDA 13 libraries (hundreds of MB, which `host_probe` finds there), numpy and the usual
pure-Python helpers (`HOST_PROVIDED`, from its package list); what strata pins or the host lacks is
carried (`select`). `check` proves the set on a fresh Python 3.12 here: every carried and host wheel
installed offline (`--no-index`), `pip check` finding nothing missing but the NVIDIA libraries, and
the roles that need no GPU imported. Standard library only.

    python -m services.app.gpu_kit.wheels download|select|check [--kit .gpu-kit]
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

CUDA_EXTRA = "cuda13"
"""The H200 host's driver (580) reports CUDA 13.0: `host_probe` checks it there."""
PYTHON_VERSION = "3.12"
PLATFORMS = (
    *(f"manylinux_2_{glibc}_x86_64" for glibc in (39, 35, 34, 31, 28, 27, 24, 17, 12, 5)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)
"""pip matches a platform tag exactly, so every glibc the device's (2.35) can run is named."""
CPU_ONLY = frozenset({"scipy-openblas32"})
"""The CPU BLAS strata preloads under MLX's CPU build (services/platform/fast_blas.py)."""
HOST_PROVIDED = frozenset(
    {
        "numpy",
        "tokenizers",
        "safetensors",
        "sentencepiece",
        "hf-xet",
        "pyyaml",
        "regex",
        "jinja2",
        "markupsafe",
        "packaging",
        "filelock",
        "fsspec",
        "tqdm",
        "typing-extensions",
        "anyio",
        "idna",
        "h11",
        "pygments",
        "markdown-it-py",
        "mdurl",
        "typer",
        "shellingham",
    }
)
"""In the H200 image's package list (device KINDS.md, 2026-11) at versions strata's pins accept, and
unpinned by strata itself: used from there. Everything strata pins is carried at its pin."""
NVIDIA_PREFIX = "nvidia-"
MIB = 1024 * 1024
_WHEEL_NAME = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$"
)
_PIP_TIMEOUT_SECONDS = 900


class WheelsError(Exception):
    """pip failed, a wheel name does not parse, or the set is incomplete."""


@dataclass(frozen=True)
class WheelFile:
    file_name: str
    name: str
    """The distribution's normalized name (PEP 503)."""
    version: str


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel(file_name: str) -> WheelFile:
    """Pure: a wheel's distribution name and version from its file name."""
    match = _WHEEL_NAME.match(file_name)
    if match is None:
        raise WheelsError(f"{file_name} is not a wheel file name")
    return WheelFile(file_name, normalized(match.group("name")), match.group("version"))


def gpu_requirements(pyproject: dict[str, object]) -> list[str]:
    """Pure: the project's dependencies and its CUDA extra, without what only the CPU build uses."""
    project = pyproject.get("project")
    if not isinstance(project, dict):
        raise WheelsError("pyproject.toml has no [project] table")
    dependencies = [str(entry) for entry in project.get("dependencies", [])]  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType, reportUnknownArgumentType]
    extras = project.get("optional-dependencies", {})  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
    if not isinstance(extras, dict) or CUDA_EXTRA not in extras:
        raise WheelsError(f"pyproject.toml has no [{CUDA_EXTRA}] extra")
    requirements = [*dependencies, *(str(entry) for entry in extras[CUDA_EXTRA])]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    return [
        entry for entry in requirements if normalized(re.split(r"[\s=<>!~;\[]", entry, maxsplit=1)[0]) not in CPU_ONLY
    ]


def download_command(python: str, requirements: list[str], destination: Path) -> list[str]:
    """Pure: the `pip download` of the closure for CPython 3.12 on the device's platforms."""
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    return [
        python, "-m", "pip", "download", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
        "--implementation", "cp", *platforms, "-d", str(destination), *requirements,
    ]  # fmt: skip


@dataclass(frozen=True)
class Selection:
    carried: tuple[WheelFile, ...]
    on_host: tuple[WheelFile, ...]
    """In HOST_PROVIDED, or NVIDIA's CUDA libraries."""
    duplicates: tuple[str, ...]
    """Distributions with more than one wheel (two versions stop an offline install)."""

    @property
    def carried_names(self) -> frozenset[str]:
        return frozenset(wheel.name for wheel in self.carried)


def select_wheels(file_names: list[str]) -> Selection:
    """Pure: which wheels of the closure are carried, and which the host already has."""
    wheels = sorted((parse_wheel(name) for name in file_names), key=lambda wheel: wheel.file_name)
    seen: dict[str, int] = {}
    for wheel in wheels:
        seen[wheel.name] = seen.get(wheel.name, 0) + 1
    on_host = tuple(w for w in wheels if w.name in HOST_PROVIDED or w.name.startswith(NVIDIA_PREFIX))
    carried = tuple(w for w in wheels if w not in on_host and w.name not in CPU_ONLY)
    return Selection(carried, on_host, tuple(sorted(name for name, count in seen.items() if count > 1)))


def unexpected_problems(pip_check_output: str) -> list[str]:
    """Pure: the lines of `pip check` that name something other than NVIDIA's libraries (which the
    host has outside this environment and `host_probe` checks there)."""
    problems: list[str] = []
    for line in pip_check_output.splitlines():
        text = line.strip()
        if not text or text.startswith("No broken requirements"):
            continue
        missing = re.search(r"requires (\S+), which is not installed", text)
        if missing is not None and normalized(missing.group(1)).startswith(NVIDIA_PREFIX):
            continue
        problems.append(text)
    return problems


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_SECONDS, check=False, cwd=cwd
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise WheelsError(f"{what} failed: {error}") from error
    if completed.returncode != 0 and what != "pip check":
        raise WheelsError(f"{what} failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    return completed.stdout


def download(kit: Path, project_root: Path) -> Path:
    """The closure into `kit/closure` (NVIDIA's libraries removed afterwards: the host has them)."""
    closure = kit / "closure"
    closure.mkdir(parents=True, exist_ok=True)
    pyproject = tomllib.loads((project_root / "pyproject.toml").read_text())
    _run(download_command(sys.executable, gpu_requirements(pyproject), closure), "pip download")
    for path in closure.glob("nvidia_*.whl"):
        path.unlink()
    return closure


def select(kit: Path) -> Selection:
    """Copies the carried wheels into `kit/carried` and writes `kit/wheels.json`."""
    closure = kit / "closure"
    selection = select_wheels(sorted(path.name for path in closure.glob("*.whl")))
    if selection.duplicates:
        raise WheelsError(f"two versions of {', '.join(selection.duplicates)} in {closure}: remove one")
    carried = kit / "carried"
    if carried.exists():
        shutil.rmtree(carried)
    carried.mkdir(parents=True)
    for wheel in selection.carried:
        shutil.copy(closure / wheel.file_name, carried / wheel.file_name)
    sizes = {wheel.file_name: (closure / wheel.file_name).stat().st_size for wheel in selection.carried}
    listing = {
        "carried": [{"file": name, "bytes": size} for name, size in sizes.items()],
        "carried_mib": round(sum(sizes.values()) / MIB, 2),
        "on_host": [wheel.file_name for wheel in selection.on_host],
    }
    (kit / "wheels.json").write_text(json.dumps(listing, indent=1))
    return selection


CHECK_IMPORTS = (
    "import grpc, google.protobuf, pydantic, pydantic_core, llguidance, fastapi, uvicorn, zeroconf, transformers, "
    "huggingface_hub; import strata_wire.shard_pb2_grpc, strata_wire.coordinator_pb2_grpc; "
    "import coordinator.main, gateway.main, discovery.mdns, services.app.gpu_kit.wheels; print('imports ok')"
)
"""The roles that import no MLX (MLX's CUDA build loads only beside a driver): the binary wheels of
the closure (grpcio, protobuf, pydantic-core, llguidance, zeroconf) load under Python 3.12."""


def check(kit: Path, python: str, project_root: Path) -> list[str]:
    """A fresh venv of `python` (3.12), every closure wheel installed offline, `pip check` and the
    imports; returns what it found (raises WheelsError on a problem)."""
    closure = kit / "closure"
    environment = kit / "check-venv"
    if environment.exists():
        shutil.rmtree(environment)
    _run([python, "-m", "venv", str(environment)], "venv")
    inside = str(environment / "bin" / "python")
    version = _run([inside, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], "python").strip()
    if version != PYTHON_VERSION:
        raise WheelsError(f"{python} is Python {version}; the device runs {PYTHON_VERSION}")
    wheels = [str(path) for path in sorted(closure.glob("*.whl")) if parse_wheel(path.name).name not in CPU_ONLY]
    install = [inside, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile", *wheels]
    _run(install, "offline install")
    problems = unexpected_problems(_run([inside, "-m", "pip", "check"], "pip check"))
    if problems:
        raise WheelsError("the closure is incomplete: " + "; ".join(problems))
    imported = _run([inside, "-c", CHECK_IMPORTS], "imports under Python 3.12", cwd=project_root)
    return [
        f"Python {version}: {len(wheels)} wheels installed offline",
        "pip check: only NVIDIA's libraries missing",
        imported.strip(),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.app.gpu_kit.wheels")
    parser.add_argument("command", choices=("download", "select", "check"))
    parser.add_argument("--kit", type=Path, default=Path(".gpu-kit"))
    parser.add_argument("--python", default="python3.12", help="the interpreter `check` builds its venv with")
    arguments = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if arguments.command == "download":
            print(f"closure in {download(arguments.kit, root)}")
        elif arguments.command == "select":
            selection = select(arguments.kit)
            print(f"carried {len(selection.carried)} wheels; the host has {len(selection.on_host)}")
        else:
            for line in check(arguments.kit, arguments.python, root):
                print(line)
    except (WheelsError, OSError, tomllib.TOMLDecodeError) as error:
        print(f"wheels: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
