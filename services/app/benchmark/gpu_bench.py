"""`make bench`'s comparison on a GPU: strata's one stream and aggregate output against mlx-lm on the
same device and dtype, in one run, as ratios; writes a "GPU" section for docs/benchmarks.md.

The model is the embedded SmolLM2's shape with weights drawn there (`services.app.gpu_run.random_model`:
a device call cannot carry the weights too). mlx-lm's one stream runs right before and right after
each cluster's, and its batches before and after all clusters, as `strata bench` pairs them. The
compute dtype is what `--compute-dtype auto` resolves to on the device (bfloat16 on an H200).
`--device cpu` is the dry run of the same code on the CPU backend.

    python -m services.app.benchmark.gpu_bench --device gpu --model-source DIR --work DIR --out FILE.md
"""

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.app.benchmark.baselines import BaselineFigures, BaselineModel, averaged, bench_compute_dtype
from services.app.benchmark.load_client import run_load
from services.app.gpu_run.cluster import ClusterError, local_cluster
from services.app.gpu_run.exactness import SKIPPED_EXIT_CODE, skipped_for_device
from services.app.gpu_run.random_model import RANDOM_MODEL_ID, RandomModelError, build_random_model
from services.kernel.compute_dtype import ComputeDtype
from services.kernel.settings import DEFAULT_PREFILL_STEP_SIZE
from services.models.model_config import read_model_config
from services.platform.compute_device import ComputeDevice, detect_compute_device


@dataclass(frozen=True)
class GpuClusterFigures:
    shards: int
    single_stream_tokens_per_second: float
    paired_mlx_lm: tuple[float, float]
    """mlx-lm's one stream right before and right after this cluster's."""
    aggregate_tokens_per_second: dict[int, float]
    """Output throughput through the gateway at each concurrency."""


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference > 0 else "n/a"


def render_gpu_section(
    device: ComputeDevice,
    dtype: ComputeDtype,
    max_tokens: int,
    layers: int,
    baselines: BaselineFigures,
    clusters: Sequence[GpuClusterFigures],
) -> str:
    """Pure: the markdown of the GPU section."""
    single = baselines.single_stream_tokens_per_second
    lines = [
        f"## GPU: {device.name}",
        "",
        f"Written by `services.app.benchmark.gpu_bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Model: the embedded SmolLM2-135M's shape ({layers} layers) with weights drawn from a seed on the device, "
        f"compute dtype {dtype} (`--compute-dtype auto` there) for strata and mlx-lm alike; requests of {max_tokens} "
        "new tokens, greedy, streamed through the gateway. Ratios within this run.",
        "",
        "| setup | one stream tok/s | vs mlx-lm | mlx-lm in the same minutes | vs it |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| mlx-lm `generate_step`, one process | {single:.1f} | 1.00x | | |",
    ]
    for cluster in clusters:
        paired = statistics.fmean(cluster.paired_mlx_lm)
        rate = cluster.single_stream_tokens_per_second
        lines.append(
            f"| strata, {cluster.shards} shard server(s) | {rate:.1f} | {_ratio(rate, single)} "
            f"| {' / '.join(f'{value:.1f}' for value in cluster.paired_mlx_lm)} | {_ratio(rate, paired)} |"
        )
    levels = sorted(baselines.batch_end_to_end_tokens_per_second)
    lines += [
        "",
        "| concurrency | mlx-lm `batch_generate` tok/s (end to end) | "
        + " | ".join(f"strata {cluster.shards} shard(s) | vs mlx-lm" for cluster in clusters)
        + " |",
        "| ---: | ---: |" + " ---: | ---: |" * len(clusters),
    ]
    for level in levels:
        reference = baselines.batch_end_to_end_tokens_per_second[level]
        cells = [
            f"{cluster.aggregate_tokens_per_second.get(level, 0.0):.1f} | "
            f"{_ratio(cluster.aggregate_tokens_per_second.get(level, 0.0), reference)}"
            for cluster in clusters
        ]
        lines.append(f"| {level} | {reference:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measure_cluster(
    home: Path, dtype: ComputeDtype, shards: int, concurrencies: Sequence[int], max_tokens: int, paired: BaselineModel
) -> GpuClusterFigures:
    print(f"gpu_bench: strata with {shards} shard server(s) in {dtype}", flush=True)
    with local_cluster(home, RANDOM_MODEL_ID, shards, dtype) as cluster:
        asyncio.run(run_load(cluster.gateway_url, RANDOM_MODEL_ID, 1, 1, 8))  # warm-up: kernels compile
        before = paired.one_stream_rate()
        result = asyncio.run(run_load(cluster.gateway_url, RANDOM_MODEL_ID, 1, 1, max(max_tokens, 128)))
        after = paired.one_stream_rate()
        timing = result.timings[0]
        decode = timing.latency - timing.time_to_first_token
        single = (timing.output_tokens - 1) / decode if decode > 0 and timing.output_tokens > 1 else 0.0
        aggregate: dict[int, float] = {}
        for concurrency in concurrencies:
            load = asyncio.run(
                run_load(cluster.gateway_url, RANDOM_MODEL_ID, concurrency, max(4, 2 * concurrency), max_tokens)
            )
            aggregate[concurrency] = load.output_throughput
            print(f"  concurrency {concurrency}: {load.output_throughput:.1f} tok/s", flush=True)
    print(f"  one stream {single:.1f} tok/s (mlx-lm {before:.1f}, {after:.1f})", flush=True)
    return GpuClusterFigures(shards, single, (before, after), aggregate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.app.benchmark.gpu_bench")
    parser.add_argument("--device", choices=("gpu", "cpu"), required=True)
    parser.add_argument("--model-source", type=Path, required=True, help="the kit's model files")
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder (the model's home)")
    parser.add_argument("--out", type=Path, required=True, help="the markdown section")
    parser.add_argument("--shards", default="1,2")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (dry runs)")
    arguments = parser.parse_args(argv)
    device = detect_compute_device()
    arguments.out.write_text("")
    if skipped_for_device(arguments.device, device, arguments.out, "gpu_bench", "GPU bench"):
        return SKIPPED_EXIT_CODE
    try:
        shard_counts = [int(part) for part in str(arguments.shards).split(",")]
        concurrencies = tuple(int(part) for part in str(arguments.concurrency).split(","))
        home = arguments.work / "home"
        model_dir = build_random_model(arguments.model_source, home, layers=arguments.layers)
        dtype = bench_compute_dtype()
        print(f"gpu_bench: mlx-lm in this process, {dtype} on {device.name}", flush=True)
        mlx_lm = BaselineModel(model_dir, dtype, arguments.max_tokens, DEFAULT_PREFILL_STEP_SIZE)
        first = mlx_lm.measure(concurrencies)
        layers = read_model_config(model_dir).num_layers
        clusters: list[GpuClusterFigures] = []
        for shards in shard_counts:
            clusters.append(measure_cluster(home, dtype, shards, concurrencies, arguments.max_tokens, mlx_lm))
            # After every cluster, against the first baselines: a step stopped by its time limit keeps these.
            partial = render_gpu_section(device, dtype, arguments.max_tokens, layers, first, clusters)
            arguments.out.write_text(partial)
        baselines = averaged((first, mlx_lm.measure(concurrencies)))
    except (RandomModelError, ClusterError, ValueError, OSError) as error:
        print(f"gpu_bench: failed: {error}", file=sys.stderr)
        with arguments.out.open("a") as section:
            section.write(f"\nGPU bench failed: {error}\n")
        return 1
    section = render_gpu_section(device, dtype, arguments.max_tokens, layers, baselines, clusters)
    arguments.out.write_text(section)
    print(section, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
