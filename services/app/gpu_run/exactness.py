"""The GPU exactness check: greedy tokens of 1 and 2 shard servers (separate processes, real gRPC)
equal plain mlx-lm in one process, on the same device, weights and dtype, token for token.

Each prompt runs alone, then all at once (rows of several requests share batches where each shard's
load-time check found its kernels batch-invariant; where not, the shard says so in its log and runs
per-request batches, and the tokens must match either way). The shards' `batch_invariant` is
reported for each run. `--device gpu` on a host whose MLX computes on the CPU skips with the reason
(exit 3); `--device cpu` is the dry run of the same code on the CPU backend in float32.

    python -m services.app.gpu_run.exactness --device gpu --model-source DIR --work DIR --out FILE.md
"""

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model

from gateway.tokenization import ModelTokenizer
from services.app.benchmark.load_client import prompt_for
from services.app.gpu_run.cluster import ClusterError, local_cluster, ring_tokens, shard_stats
from services.app.gpu_run.random_model import RANDOM_MODEL_ID, RandomModelError, build_random_model
from services.kernel.compute_dtype import ComputeDtype, parse_compute_dtype
from services.kernel.settings import DEFAULT_PREFILL_STEP_SIZE
from services.platform.compute_device import ComputeDevice, detect_compute_device
from services.platform.mlx_compute import convert_module

SKIPPED_EXIT_CODE = 3
RequestedDevice = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class ExactnessRun:
    compute_dtype: ComputeDtype
    shards: int
    stages: tuple[tuple[int, int], ...]
    alone_equal: bool
    together_equal: bool
    batch_invariant: tuple[bool, ...]
    """Each shard's load-time verdict: rows of different requests may share its batches."""
    mismatch: str = ""
    """The first prompt whose tokens differ, and where, when one does."""


def device_problem(requested: RequestedDevice, device: ComputeDevice) -> str | None:
    """Pure: why this host cannot run the check on the device asked for, or None."""
    if requested == "gpu" and device.kind == "cpu":
        return "MLX computes on the CPU here (no CUDA or Metal device): the GPU check needs a GPU"
    if requested == "cpu" and device.kind != "cpu":
        return f"MLX computes on {device.kind} here: the CPU dry run needs MLX's CPU build"
    return None


def skipped_for_device(requested: RequestedDevice, device: ComputeDevice, out: Path, step: str, title: str) -> bool:
    """Whether this host cannot run `step` on the device asked for; if so, says why on stdout and in `out`."""
    problem = device_problem(requested, device)
    if problem is None:
        return False
    print(f"{step}: skipped: {problem}", flush=True)
    out.write_text(f"{title} skipped: {problem}\n")
    return True


def dtypes_for(device: ComputeDevice, asked: Sequence[ComputeDtype]) -> tuple[ComputeDtype, ...]:
    """Pure: the dtypes asked for, else the device's "auto" dtype and, on CUDA, float16 as well."""
    if asked:
        return tuple(dict.fromkeys(asked))
    if device.kind == "cuda":
        return tuple(dict.fromkeys((device.auto_compute_dtype, "float16")))
    return (device.auto_compute_dtype,)


def first_mismatch(prompts: int, expected: Sequence[Sequence[int]], got: Sequence[Sequence[int]]) -> str:
    """Pure: "" when every prompt's tokens are equal, else the first prompt and position that differ."""
    for index in range(prompts):
        want, have = list(expected[index]), list(got[index])
        if want != have:
            position = next((at for at, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), None)
            where = f"token {position}" if position is not None else f"length {len(have)} vs {len(want)}"
            return f"prompt {index}: {where} (mlx-lm {want[:12]}..., strata {have[:12]}...)"
    return ""


def reference_tokens(
    model_dir: Path, dtype: ComputeDtype, prompts: Sequence[Sequence[int]], max_tokens: int
) -> list[list[int]]:
    """Plain mlx-lm greedy in this process, on the same weights, dtype and prefill chunking."""
    model, _ = load_model(model_dir)
    model = convert_module(model, dtype)
    results: list[list[int]] = []
    for prompt in prompts:
        tokens = [
            int(token)
            for token, _ in generate_step(
                mx.array(list(prompt)), model, max_tokens=max_tokens, prefill_step_size=DEFAULT_PREFILL_STEP_SIZE
            )
        ]
        results.append(tokens)
    return results


def check_cluster(
    home: Path,
    dtype: ComputeDtype,
    shards: int,
    prompts: Sequence[Sequence[int]],
    expected: list[list[int]],
    max_tokens: int,
) -> ExactnessRun:
    with local_cluster(home, RANDOM_MODEL_ID, shards, dtype) as cluster:
        alone = [ring_tokens(cluster, prompt, max_tokens) for prompt in prompts]
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:

            def run_one(prompt: Sequence[int]) -> list[int]:
                return ring_tokens(cluster, prompt, max_tokens)

            together = list(pool.map(run_one, prompts))
        invariant = tuple(shard_stats(address).batch_invariant for address in cluster.shard_addresses)
        stages = cluster.stages
    mismatch = first_mismatch(len(prompts), expected, alone)
    mismatch = mismatch or first_mismatch(len(prompts), expected, together)
    return ExactnessRun(dtype, shards, stages, alone == expected, together == expected, invariant, mismatch)


def render(device: ComputeDevice, runs: Sequence[ExactnessRun], max_tokens: int, prompts: int) -> str:
    """Pure: the markdown the lead pastes (docs/benchmarks.md, "GPU")."""
    lines = [
        f"### Exactness on {device.name} ({device.kind})",
        "",
        f"{prompts} greedy prompts of {max_tokens} tokens, the embedded SmolLM2's shape with random weights "
        "(seed 7), each prompt alone and all at once, against mlx-lm in one process on the same device and dtype.",
        "",
        "| dtype | shards | layers | alone | all at once | batch-invariant shards |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for run in runs:
        layers = " + ".join(f"{start}-{end}" for start, end in run.stages)
        invariant = ", ".join("yes" if flag else "no (per-request batches)" for flag in run.batch_invariant)
        lines.append(
            f"| {run.compute_dtype} | {run.shards} | {layers} | {'equal' if run.alone_equal else 'DIFFERENT'} "
            f"| {'equal' if run.together_equal else 'DIFFERENT'} | {invariant} |"
        )
    lines += [f"\nmismatch ({run.compute_dtype}, {run.shards} shards): {run.mismatch}" for run in runs if run.mismatch]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.app.gpu_run.exactness")
    parser.add_argument("--device", choices=("gpu", "cpu"), required=True)
    parser.add_argument("--model-source", type=Path, required=True, help="the kit's model files")
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder (the model's home)")
    parser.add_argument("--out", type=Path, required=True, help="the markdown summary; FILE.json beside it")
    parser.add_argument("--dtypes", default="", help="comma-separated (default: the device's auto, float16 on CUDA)")
    parser.add_argument("--shards", default="1,2")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (dry runs)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=4)
    arguments = parser.parse_args(argv)
    device = detect_compute_device()
    arguments.out.write_text("")
    if skipped_for_device(arguments.device, device, arguments.out, "exactness", "GPU exactness"):
        return SKIPPED_EXIT_CODE
    try:
        asked: list[ComputeDtype] = [parse_compute_dtype(part) for part in str(arguments.dtypes).split(",") if part]
        shard_counts = [int(part) for part in str(arguments.shards).split(",")]
        model_dir = build_random_model(arguments.model_source, arguments.work / "home", layers=arguments.layers)
        tokenizer = ModelTokenizer.from_directory(model_dir)
        prompts = [tokenizer.encode_text(prompt_for(index)) for index in range(arguments.prompts)]
        runs: list[ExactnessRun] = []
        for dtype in dtypes_for(device, asked):
            print(f"exactness: mlx-lm reference in {dtype} on {device.name}", flush=True)
            expected = reference_tokens(model_dir, dtype, prompts, arguments.max_tokens)
            for shards in shard_counts:
                run = check_cluster(arguments.work / "home", dtype, shards, prompts, expected, arguments.max_tokens)
                print(f"exactness: {run}", flush=True)
                runs.append(run)
                # After every run: a device step stopped by its time limit still leaves what it found.
                arguments.out.write_text(render(device, runs, arguments.max_tokens, arguments.prompts))
    except (RandomModelError, ClusterError, ValueError, OSError) as error:
        print(f"exactness: failed: {error}", file=sys.stderr)
        with arguments.out.open("a") as summary:
            summary.write(f"\nGPU exactness failed: {error}\n")
        return 1
    summary = render(device, runs, arguments.max_tokens, arguments.prompts)
    arguments.out.write_text(summary)
    arguments.out.with_suffix(".json").write_text(json.dumps([asdict(run) for run in runs], indent=1))
    print(summary, flush=True)
    return 0 if all(run.alone_equal and run.together_equal for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
