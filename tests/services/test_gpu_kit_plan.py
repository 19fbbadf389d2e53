"""The GPU run's device calls (services/app/gpu_kit/plan.py): sized under a call's 64 MiB with the
working tree, every call but the last stashing its parts, the last one finishing the run."""

import tarfile
from pathlib import Path

import pytest

from services.app.gpu_kit.parts import MIB
from services.app.gpu_kit.plan import (
    CALL_LIMIT_BYTES,
    FINISH_TIMEOUT_SECONDS,
    MODEL_FILES,
    PlanError,
    call_budget,
    device_calls,
    pack_model_files,
    prepare,
    show,
)

pytestmark = pytest.mark.unit


def test_a_call_carries_what_the_working_tree_leaves_of_its_64_mib() -> None:
    assert call_budget(3 * MIB) == CALL_LIMIT_BYTES - 3 * MIB - MIB
    with pytest.raises(PlanError, match="fills a call"):
        call_budget(CALL_LIMIT_BYTES)


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
