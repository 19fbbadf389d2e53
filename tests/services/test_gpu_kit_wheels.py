"""The GPU kit's wheel list (services/app/gpu_kit/wheels.py): the closure asked of pip for the device's
Python 3.12, and which of it is carried. `python -m services.app.gpu_kit.wheels check` proves a
downloaded closure offline in a fresh Python 3.12 venv (README "A GPU run")."""

import tomllib
from pathlib import Path

import pytest

from services.app.gpu_kit.wheels import (
    PLATFORMS,
    WheelsError,
    download_command,
    gpu_requirements,
    parse_wheel,
    select_wheels,
    unexpected_problems,
)

pytestmark = pytest.mark.unit

CLOSURE = [
    "mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl",
    "mlx-0.32.4-cp312-cp312-manylinux_2_35_x86_64.whl",
    "pydantic_core-2.50.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "llguidance-1.9.1-cp39-abi3-manylinux_2_31_x86_64.whl",
    "numpy-2.5.5-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "nvidia_cublas-13.10.0.20-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.whl",
    "scipy_openblas32-0.3.34.481.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "typing_extensions-4.16.0-py3-none-any.whl",
]


def test_the_gpu_requirements_are_the_projects_with_the_cuda_extra_and_no_cpu_blas() -> None:
    pyproject = tomllib.loads(Path("pyproject.toml").read_text())
    requirements = gpu_requirements(pyproject)
    assert "mlx[cuda13]==0.32.4; sys_platform == 'linux'" in requirements
    assert "llguidance==1.9.1" in requirements
    assert "pydantic==2.14.3" in requirements
    assert not any(entry.startswith("scipy-openblas32") for entry in requirements)
    with pytest.raises(WheelsError, match="no \\[cuda13\\] extra"):
        gpu_requirements({"project": {"dependencies": []}})


def test_pip_is_asked_for_cpython_312_wheels_on_every_platform_the_device_runs() -> None:
    command = download_command("python", ["mlx==0.32.4"], Path("/kit/closure"))
    assert command[:6] == ["python", "-m", "pip", "download", "--only-binary=:all:", "--python-version"]
    assert command[command.index("--python-version") + 1] == "3.12"
    assert command[command.index("--implementation") + 1] == "cp"
    platforms = [command[at + 1] for at, word in enumerate(command) if word == "--platform"]
    # llguidance 1.9.1's only x86_64 wheel is manylinux_2_31; mlx's manylinux_2_35.
    assert {"manylinux_2_31_x86_64", "manylinux_2_35_x86_64", "manylinux2014_x86_64"} <= set(platforms)
    assert platforms == list(PLATFORMS)


def test_wheel_names_parse_to_normalized_distributions() -> None:
    wheel = parse_wheel("pydantic_core-2.50.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl")
    assert (wheel.name, wheel.version) == ("pydantic-core", "2.50.4")
    assert parse_wheel("mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl").name == "mlx-cuda-13"
    with pytest.raises(WheelsError, match="not a wheel"):
        parse_wheel("mlx-0.32.4.tar.gz")


def test_strata_pins_are_carried_and_the_hosts_cuda_libraries_and_numpy_are_not() -> None:
    selection = select_wheels(CLOSURE)
    assert selection.carried_names == {"mlx-cuda-13", "mlx", "pydantic-core", "llguidance"}
    assert {wheel.name for wheel in selection.on_host} == {"numpy", "nvidia-cublas", "typing-extensions"}
    assert selection.duplicates == ()
    twice = select_wheels([*CLOSURE, "numpy-2.4.0-cp312-cp312-manylinux_2_28_x86_64.whl"])
    assert twice.duplicates == ("numpy",)


def test_pip_check_may_miss_only_nvidias_libraries() -> None:
    output = (
        "mlx-cuda-13 0.32.4 requires nvidia-cublas, which is not installed.\n"
        "mlx-cuda-13 0.32.4 requires nvidia_cudnn_cu13, which is not installed.\n"
    )
    assert unexpected_problems(output) == []
    assert unexpected_problems("No broken requirements found.") == []
    broken = "transformers 5.24.0 requires tokenizers, which is not installed."
    assert unexpected_problems(output + broken) == [broken]
