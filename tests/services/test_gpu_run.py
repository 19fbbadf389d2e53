"""The GPU run's exactness check (services/app/gpu_run/): its pure parts, and its CPU dry run end to
end (the same code path as on a GPU: a drawn model, 1 and 2 shard processes over real gRPC, mlx-lm in
this process), which is what the kit runs on a borrowed GPU with `--device gpu`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.app.benchmark.baselines import BaselineFigures
from services.app.benchmark.gpu_bench import GpuClusterFigures, render_gpu_section
from services.app.benchmark.gpu_bench import main as bench_main
from services.app.gpu_run.exactness import SKIPPED_EXIT_CODE, device_problem, dtypes_for, first_mismatch
from services.app.gpu_run.exactness import main as exactness_main
from services.app.gpu_run.random_model import RandomModelError, build_random_model, random_model_config
from services.platform.compute_device import ComputeDevice

CPU = ComputeDevice("cpu", "AMD EPYC", None)
H200 = ComputeDevice("cuda", "NVIDIA H200", 143 * 2**30, 9)
TURING = ComputeDevice("cuda", "Tesla T4", 15 * 2**30, 7)
EMBEDDED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


@pytest.mark.unit
def test_the_gpu_check_skips_with_its_reason_where_mlx_computes_on_the_cpu() -> None:
    assert device_problem("gpu", H200) is None
    assert device_problem("cpu", CPU) is None
    assert "needs a GPU" in (device_problem("gpu", CPU) or "")
    assert "CPU build" in (device_problem("cpu", H200) or "")


@pytest.mark.unit
def test_a_gpu_checks_its_auto_dtype_and_float16_the_cpu_float32() -> None:
    assert dtypes_for(H200, ()) == ("bfloat16", "float16")
    assert dtypes_for(TURING, ()) == ("float16",)
    assert dtypes_for(CPU, ()) == ("float32",)
    assert dtypes_for(H200, ("float16", "float16")) == ("float16",)


@pytest.mark.unit
def test_the_first_differing_token_is_named() -> None:
    assert first_mismatch(2, [[1, 2], [3, 4]], [[1, 2], [3, 4]]) == ""
    assert first_mismatch(2, [[1, 2], [3, 4]], [[1, 2], [3, 5]]).startswith("prompt 1: token 1")
    assert "length 1 vs 2" in first_mismatch(1, [[1, 2]], [[1]])


@pytest.mark.unit
def test_the_drawn_model_keeps_the_embedded_shape_without_its_quantization() -> None:
    source: dict[str, object] = {"model_type": "llama", "num_hidden_layers": 30, "quantization": {"bits": 4}}
    assert random_model_config(source, None) == {"model_type": "llama", "num_hidden_layers": 30}
    assert random_model_config(source, 4)["num_hidden_layers"] == 4
    with pytest.raises(RandomModelError, match="at least 1"):
        random_model_config(source, 0)
    with pytest.raises(RandomModelError, match="only llama"):
        random_model_config({"model_type": "qwen3"}, None)


@pytest.mark.unit
def test_the_gpu_section_gives_strata_against_mlx_lm_as_ratios() -> None:
    baselines = BaselineFigures(100.0, {1: 90.0, 8: 500.0}, {1: 80.0, 8: 400.0})
    clusters = [GpuClusterFigures(1, 50.0, (90.0, 110.0), {1: 40.0, 8: 800.0})]
    section = render_gpu_section(H200, "bfloat16", 64, 30, baselines, clusters)
    assert section.startswith("## GPU: NVIDIA H200\n")
    assert "compute dtype bfloat16" in section
    assert "| strata, 1 shard server(s) | 50.0 | 0.50x | 90.0 / 110.0 | 0.50x |" in section
    assert "| 8 | 400.0 | 800.0 | 2.00x |" in section


def _model_files(embedded_models: Path, folder: Path) -> Path:
    """The kit's model files: the embedded model's config and tokenizer, without its weights."""
    folder.mkdir()
    embedded = next(embedded_models.iterdir())
    for name in EMBEDDED_FILES:
        (folder / name).write_bytes((embedded / name).read_bytes())
    return folder


@pytest.mark.process
@pytest.mark.model
@pytest.mark.timeout(400)
def test_the_cpu_dry_run_finds_one_and_two_shards_equal_to_mlx_lm(embedded_models: Path, tmp_path: Path) -> None:
    source = _model_files(embedded_models, tmp_path / "model-files")
    out = tmp_path / "exactness.md"
    command = [sys.executable, "-m", "services.app.gpu_run.exactness", "--device", "cpu", "--model-source"]
    command += [str(source), "--work", str(tmp_path / "work"), "--out", str(out)]
    command += ["--layers", "3", "--max-tokens", "6", "--prompts", "3"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=360, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    runs = json.loads(out.with_suffix(".json").read_text())
    assert [(run["shards"], run["alone_equal"], run["together_equal"]) for run in runs] == [
        (1, True, True),
        (2, True, True),
    ]
    assert "| float32 | 2 | 0-2 + 2-3 | equal | equal |" in out.read_text()

    gpu = subprocess.run(
        [*command[:3], "--device", "gpu", *command[5:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert gpu.returncode == SKIPPED_EXIT_CODE
    assert "skipped" in gpu.stdout


@pytest.mark.process
@pytest.mark.model
@pytest.mark.timeout(300)
def test_the_cpu_dry_run_of_the_gpu_bench_writes_its_section(embedded_models: Path, tmp_path: Path) -> None:
    source = _model_files(embedded_models, tmp_path / "model-files")
    out = tmp_path / "gpu-bench.md"
    command = [sys.executable, "-m", "services.app.benchmark.gpu_bench", "--device", "cpu", "--model-source"]
    command += [str(source), "--work", str(tmp_path / "work"), "--out", str(out)]
    command += ["--layers", "2", "--shards", "1,2", "--concurrency", "1,2", "--max-tokens", "8"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    section = out.read_text()
    assert "compute dtype float32" in section
    assert "| strata, 2 shard server(s) |" in section
    assert "| 2 |" in section


@pytest.mark.unit
def test_a_kit_without_the_model_files_is_refused_with_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "model-files").mkdir()
    with pytest.raises(RandomModelError, match=r"lacks config\.json, tokenizer\.json"):
        build_random_model(tmp_path / "model-files", tmp_path / "home")


@pytest.mark.unit
@pytest.mark.parametrize("module", ["exactness", "gpu_bench"])
def test_bad_input_to_the_gpu_steps_fails_with_a_message_not_a_traceback(module: str, tmp_path: Path) -> None:
    """On the CPU, `--device cpu` reaches the checks of its input (`--device gpu` would skip first)."""
    run = exactness_main if module == "exactness" else bench_main
    out = tmp_path / "out.md"
    arguments = ["--device", "cpu", "--model-source", str(tmp_path / "absent"), "--work", str(tmp_path), "--out"]
    assert run([*arguments, str(out)]) == 1
    assert "failed" in out.read_text()
    assert run([*arguments, str(out), "--shards", "one"]) == 1
    assert "failed" in out.read_text()
