"""The GPU run kit: files cut into call-sized parts and rebuilt, and the host probe's parsing
(services/app/gpu_kit/)."""

import hashlib
from pathlib import Path

import pytest

from services.app.gpu_kit.host_probe import parse_ldconfig, probe_from
from services.app.gpu_kit.parts import (
    Part,
    PartsError,
    group_into_calls,
    missing_parts,
    plan_parts,
    reassemble,
    split_into_calls,
    stash,
)

pytestmark = pytest.mark.unit

SMI_CUDA13 = "| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: 13.0     |"
LDCONFIG = """3 libs found in cache `/etc/ld.so.cache'
\tlibcuda.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libcuda.so.1
\tlibnccl.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnccl.so.2
\tlibnccl.so.2 (libc6) => /usr/lib32/libnccl.so.2
"""


def test_a_large_file_is_cut_into_parts_and_the_calls_stay_under_their_limit() -> None:
    plans = plan_parts({"mlx_cuda_13.whl": 250, "mlx.whl": 30}, part_bytes=100)
    assert [part.size for part in plans["mlx_cuda_13.whl"]] == [100, 100, 50]
    assert plans["mlx.whl"] == (Part("mlx.whl.part-000", 30),)
    calls = group_into_calls([*plans["mlx_cuda_13.whl"], *plans["mlx.whl"]], call_bytes=100)
    assert [[part.size for part in call] for call in calls] == [[100], [100], [50, 30]]
    with pytest.raises(PartsError, match="larger than a call"):
        group_into_calls([Part("big", 101)], call_bytes=100)


def test_parts_carried_in_several_calls_rebuild_the_files_byte_for_byte(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    contents = {"a.whl": bytes(range(256)) * 9, "b.gguf": b"\x07" * 1000}
    for name, data in contents.items():
        (sources / name).write_bytes(data)

    folders = split_into_calls([sources / name for name in contents], tmp_path / "calls", 700, 1000)
    assert all(sum(path.stat().st_size for path in folder.glob("*.part-*")) <= 1000 for folder in folders)
    staging = tmp_path / "staging"
    for folder in folders:
        stash(folder, staging)
    rebuilt = reassemble(staging, tmp_path / "wheels")

    assert {path.name: path.read_bytes() for path in rebuilt} == contents


def test_a_missing_or_damaged_part_is_named_and_nothing_wrong_is_installed(tmp_path: Path) -> None:
    source = tmp_path / "a.whl"
    source.write_bytes(b"abc" * 500)
    folders = split_into_calls([source], tmp_path / "calls", 600, 600)
    staging = tmp_path / "staging"
    stash(folders[0], staging)
    stash(folders[1], staging)

    assert missing_parts(staging) == ["a.whl.part-002"]
    with pytest.raises(PartsError, match=r"1 parts are missing or incomplete .*a\.whl\.part-002"):
        reassemble(staging, tmp_path / "wheels")

    stash(folders[2], staging)
    damaged = staging / "a.whl.part-001"
    damaged.write_bytes(b"x" * damaged.stat().st_size)
    with pytest.raises(PartsError, match="does not match its sha256"):
        reassemble(staging, tmp_path / "wheels")
    assert not (tmp_path / "wheels" / "a.whl").exists()
    assert hashlib.sha256(source.read_bytes()).hexdigest()  # the source is untouched


def test_reassembly_without_the_first_call_says_the_manifest_is_missing(tmp_path: Path) -> None:
    with pytest.raises(PartsError, match=r"no manifest\.json"):
        reassemble(tmp_path, tmp_path / "wheels")


def test_ldconfig_entries_map_each_soname_to_its_folder_x86_64_only() -> None:
    assert parse_ldconfig(LDCONFIG) == {
        "libcuda.so.1": "/usr/local/nvidia/lib64",
        "libnccl.so.2": "/usr/lib/x86_64-linux-gnu",
    }


def test_a_cuda_13_host_with_torchs_nvidia_wheels_needs_no_library_carried() -> None:
    torch_site = "/opt/torch/.venv/lib/python3.12/site-packages/nvidia"
    folders = {
        f"{torch_site}/cublas/lib": ["libcublas.so.13", "libcublasLt.so.13"],
        f"{torch_site}/cufft/lib": ["libcufft.so.12"],
        f"{torch_site}/cusolver/lib": ["libcusolver.so.12"],
        f"{torch_site}/cuda_nvrtc/lib": ["libnvrtc.so.13"],
        f"{torch_site}/cuda_runtime/lib": ["libcudart.so.13"],
        f"{torch_site}/cudnn/lib": ["libcudnn.so.9"],
    }

    probe = probe_from(SMI_CUDA13, LDCONFIG, folders, "CPython 3.12.3")

    assert (probe.backend, probe.missing, probe.driver_found) == ("cuda13", {}, True)
    assert probe.found["libnccl.so.2"] == "/usr/lib/x86_64-linux-gnu"
    assert f"{torch_site}/cudnn/lib" in probe.library_path.split(":")


def test_a_host_without_cuda_libraries_is_told_which_wheels_to_carry() -> None:
    probe = probe_from(SMI_CUDA13.replace("13.0", "12.4"), "", {}, "CPython 3.12.3")

    assert probe.backend == "cuda12"
    assert probe.missing["libcudnn.so.9"] == "nvidia-cudnn-cu12"
    assert not probe.driver_found
    assert probe_from(None, "", {}, "CPython 3.12.3").backend == "cpu"
