"""The GPU run's device calls (services/app/gpu_kit/plan.py): sized under a call's 64 MiB with the
working tree, every call but the last stashing its parts, the last one finishing the run."""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from services.app.gpu_kit.parts import MIB, split_into_calls
from services.app.gpu_kit.plan import (
    CALL_LIMIT_BYTES,
    FINISH_TIMEOUT_SECONDS,
    MODEL_ARCHIVE,
    MODEL_FILES,
    SCRIPT,
    PlanError,
    call_budget,
    device_calls,
    pack_model_files,
    prepare,
    show,
)


@pytest.mark.unit
def test_a_call_carries_what_the_working_tree_leaves_of_its_64_mib() -> None:
    assert call_budget(3 * MIB) == CALL_LIMIT_BYTES - 3 * MIB - MIB
    with pytest.raises(PlanError, match="fills a call"):
        call_budget(CALL_LIMIT_BYTES)


@pytest.mark.unit
def test_every_call_but_the_last_stashes_and_the_last_finishes_the_run() -> None:
    calls = device_calls([".gpu-kit/calls/call-1", ".gpu-kit/calls/call-2"], [57 * MIB, 60 * MIB], MIB // 4)
    assert [call.command for call in calls] == [
        "bash services/app/gpu_kit/on_device.sh stash .gpu-kit/calls/call-1",
        "bash services/app/gpu_kit/on_device.sh finish .gpu-kit/calls/call-2",
    ]
    assert calls[0].carry == (".gpu-kit/calls/call-1", "strata_wire")
    assert calls[1].timeout_s == FINISH_TIMEOUT_SECONDS < 600
    assert all(len(call.command) <= 2000 and len(call.carry) <= 8 for call in calls)
    text = show(calls, 3 * MIB)
    assert "2 device calls" in text
    assert "# 63.2 MiB" in text  # 60 MiB of parts, the stubs and the 3 MiB working tree


@pytest.mark.unit
def test_the_model_travels_as_its_config_and_tokenizer_without_weights(tmp_path: Path) -> None:
    source = tmp_path / "embedded"
    source.mkdir()
    for name in (*MODEL_FILES, "model-embed.safetensors"):
        (source / name).write_text("{}")
    archive = pack_model_files(source, tmp_path / "model-files.tar.gz")
    with tarfile.open(archive) as packed:
        assert sorted(packed.getnames()) == sorted(MODEL_FILES)
    (source / "tokenizer.json").unlink()
    with pytest.raises(PlanError, match=r"lacks tokenizer\.json"):
        pack_model_files(source, tmp_path / "again.tar.gz")


@pytest.mark.unit
def test_preparing_without_wheels_or_stubs_says_what_to_run_first(tmp_path: Path) -> None:
    kit = tmp_path / ".gpu-kit"
    with pytest.raises(PlanError, match=r"gpu_kit\.wheels download"):
        prepare(kit, tmp_path, tmp_path)
    (kit / "carried").mkdir(parents=True)
    (kit / "carried" / "mlx-0.32.4-cp312-cp312-manylinux_2_35_x86_64.whl").write_bytes(b"x")
    with pytest.raises(PlanError, match="make protos"):
        prepare(kit, tmp_path, tmp_path)
    (tmp_path / "elsewhere" / "strata_wire").mkdir(parents=True)
    with pytest.raises(PlanError, match="inside the repository"):
        prepare(kit, tmp_path, tmp_path / "elsewhere")


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, which pip installs offline like the carried ones."""
    path = folder / "kit_demo-0.1-py3-none-any.whl"
    files = {
        "kit_demo/__init__.py": "VALUE = 7\n",
        "kit_demo-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: kit-demo\nVersion: 0.1\n",
        "kit_demo-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr("kit_demo-0.1.dist-info/RECORD", "".join(f"{name},,\n" for name in files) + "RECORD,,\n")
    return path


@pytest.mark.process
@pytest.mark.timeout(300)
def test_the_device_script_rebuilds_installs_and_skips_the_gpu_steps_on_a_cpu_host(tmp_path: Path) -> None:
    """on_device.sh as the two calls run it, here: parts stashed over two calls, rebuilt, installed
    offline, the probe written; the GPU steps then skip with their reason (MLX computes on the CPU)."""
    sources = tmp_path / "sources"
    sources.mkdir()
    model = sources / "model"
    model.mkdir()
    for name in MODEL_FILES:
        (model / name).write_text("{}")
    files = [_wheel(sources), pack_model_files(model, sources / MODEL_ARCHIVE)]
    folders = split_into_calls(files, tmp_path / "calls", part_bytes=400, call_bytes=400)
    assert len(folders) >= 2
    interpreter = tmp_path / "bin"
    interpreter.mkdir()
    wrapper = interpreter / "python3"  # this venv's interpreter as the device's `python3` (a link would leave the venv)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    environment = {
        **os.environ,
        "PATH": f"{interpreter}:{os.environ['PATH']}",
        "STRATA_KIT_ROOT": str(tmp_path / "device"),
        "OUT": str(tmp_path / "out"),
        "STRATA_EXACTNESS_SECONDS": "120",
        "STRATA_BENCH_SECONDS": "120",
    }
    for folder in folders[:-1]:
        stashed = subprocess.run(
            ["bash", SCRIPT, "stash", str(folder)],
            check=False,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert stashed.returncode == 0, stashed.stderr
    finished = subprocess.run(
        ["bash", SCRIPT, "finish", str(folders[-1])],
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        timeout=280,
    )

    out = tmp_path / "out"
    assert (tmp_path / "device" / "strata-site" / "kit_demo" / "__init__.py").read_text() == "VALUE = 7\n"
    assert sorted(p.name for p in (tmp_path / "device" / "strata-work" / "model-files").iterdir()) == sorted(
        MODEL_FILES
    )
    assert '"backend": "cpu"' in (out / "probe.json").read_text()
    assert "GPU exactness skipped: MLX computes on the CPU" in (out / "gpu-exactness.md").read_text()
    assert "GPU bench skipped" in (out / "gpu-bench.md").read_text()
    assert finished.returncode == 1  # skipped steps are no success
    steps = (out / "steps.txt").read_text()
    assert "exactness exit 3" in steps
    assert "bench exit 3" in steps
