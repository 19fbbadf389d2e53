"""Writes docs/benchmarks.md (tables, ratios against the targets) and a PNG plot beside it."""

import importlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from services.app.benchmark.baselines import BaselineFigures
from services.app.benchmark.event_latency import EventLatency, event_latency_lines
from services.app.benchmark.llama_cpp import LlamaCppFigures
from services.app.benchmark.load_client import LoadResult
from services.app.benchmark.step_profile import StepProfile, profile_lines
from services.app.benchmark.transport_floor import TransportFloor
from services.platform.fast_blas import blas_description

MEBIBYTE = 1024 * 1024


@dataclass(frozen=True)
class ShardFigures:
    layers: tuple[int, int]
    peak_rss_bytes: int
    layer_bytes: int
    peak_kv_cache_bytes: int
    batch_invariant: bool
    native_attention: bool


@dataclass(frozen=True)
class HopOverhead:
    """Per-hop overhead at batch 1, in seconds: percentiles of the first shard's recent steps."""

    p50: float
    p99: float


@dataclass(frozen=True)
class ClusterFigures:
    shards: int
    single_stream_tokens_per_second: float
    per_hop: HopOverhead
    loads: dict[int, LoadResult]
    shard_figures: tuple[ShardFigures, ...]
    paired_mlx_lm: tuple[float, ...] = ()
    """mlx-lm's one-stream decode rate right before and right after this cluster's."""
    event_latency: EventLatency | None = None
    """Committed event to the dashboard's stream (measured on the first cluster only)."""
    step_profile: StepProfile | str | None = None
    """Where its shard's step time goes under load (1 shard only); a string: why it was not profiled."""
    step_profile_concurrency: int = 0

    @property
    def paired_mlx_lm_mean(self) -> float:
        return statistics.fmean(self.paired_mlx_lm) if self.paired_mlx_lm else float("nan")


ScaleOutRound = tuple[dict[int, float], dict[int, float], dict[int, float]]
"""Aggregate tok/s per concurrency: one one-core host, two pipelined, two with an instance each."""


@dataclass(frozen=True)
class ScaleOutFigures:
    """Means over the rounds (a shared machine's speed drifts between runs minutes apart)."""

    one_host: dict[int, float]
    two_hosts: dict[int, float]
    """One instance pipelined over both hosts."""
    two_instances: dict[int, float]
    """The same two hosts with an instance of the model on each (`--instances 2`)."""
    in_namespaces: bool
    """Hosts simulated by network namespaces (else: pinned processes on loopback)."""
    rounds: tuple[ScaleOutRound, ...] = ()


def scale_out_from_rounds(rounds: Sequence[ScaleOutRound], in_namespaces: bool) -> ScaleOutFigures:
    def mean(setup: int) -> dict[int, float]:
        concurrencies = [c for c in sorted(rounds[0][setup]) if all(c in figures[setup] for figures in rounds)]
        return {c: statistics.fmean(figures[setup][c] for figures in rounds) for c in concurrencies}

    return ScaleOutFigures(mean(0), mean(1), mean(2), in_namespaces, tuple(rounds))


def scale_out_rounds_line(scale_out: ScaleOutFigures) -> str:
    parts: list[str] = []
    for concurrency in sorted(scale_out.one_host):
        pipelined = ", ".join(_ratio(r[1].get(concurrency, float("nan")), r[0][concurrency]) for r in scale_out.rounds)
        copies = ", ".join(_ratio(r[2].get(concurrency, float("nan")), r[0][concurrency]) for r in scale_out.rounds)
        parts.append(f"at {concurrency}, pipelined {pipelined}, an instance on each {copies}")
    return (
        f"The figures above are means over {len(scale_out.rounds)} rounds, each running every setup once, in "
        f"alternating order; the ratio in each round: {'; '.join(parts)}."
    )


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference > 0 and not math.isnan(value) else "n/a"


def _load_table(cluster: ClusterFigures, baselines: BaselineFigures) -> list[str]:
    lines = [
        "| concurrency | output tok/s | vs batch_generate decode | vs batch_generate end to end "
        "| TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency, load in sorted(cluster.loads.items()):
        batch = baselines.batch_tokens_per_second.get(concurrency, float("nan"))
        end_to_end = baselines.batch_end_to_end_tokens_per_second.get(concurrency, float("nan"))
        lines.append(
            f"| {concurrency} | {load.output_throughput:.1f} | {_ratio(load.output_throughput, batch)} "
            f"| {_ratio(load.output_throughput, end_to_end)} "
            f"| {_ms(load.median('ttft'))} / {_ms(load.percentile('ttft', 99))} "
            f"| {_ms(load.median('tpot'))} / {_ms(load.percentile('tpot', 99))} "
            f"| {_ms(load.median('itl'))} / {_ms(load.percentile('itl', 99))} |"
        )
    return lines


def _batching(shard: ShardFigures) -> str:
    if not shard.batch_invariant:
        return "no"
    return "yes, native attention" if shard.native_attention else "yes, attention through MLX ops"


def _memory_table(clusters: tuple[ClusterFigures, ...]) -> list[str]:
    lines = [
        "| shards | stage (layers) | weights in compute dtype MiB | peak RSS MiB | peak KV MiB "
        "| RSS - weights - KV MiB (target <= 400 MB) | batches mix requests |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for cluster in clusters:
        for shard in cluster.shard_figures:
            start, end = shard.layers
            lines.append(
                f"| {cluster.shards} | [{start}, {end}) | {shard.layer_bytes / MEBIBYTE:.0f} "
                f"| {shard.peak_rss_bytes / MEBIBYTE:.0f} | {shard.peak_kv_cache_bytes / MEBIBYTE:.1f} "
                f"| {(shard.peak_rss_bytes - shard.layer_bytes - shard.peak_kv_cache_bytes) / MEBIBYTE:.0f} "
                f"| {_batching(shard)} |"
            )
    return lines


class _Axes(Protocol):
    def plot(self, x: list[int], y: list[float], **style: object) -> object: ...
    def set_xscale(self, scale: str, **options: object) -> None: ...
    def set_xlabel(self, text: str) -> object: ...
    def set_ylabel(self, text: str) -> object: ...
    def set_title(self, text: str) -> object: ...
    def grid(self, visible: bool, **style: object) -> None: ...
    def legend(self) -> object: ...


class _Figure(Protocol):
    def tight_layout(self) -> None: ...
    def savefig(self, path: Path, *, dpi: int) -> None: ...


class _Pyplot(Protocol):
    def subplots(self, *, figsize: tuple[float, float]) -> tuple[_Figure, _Axes]: ...
    def close(self, figure: _Figure) -> None: ...


def _pyplot() -> _Pyplot | None:
    """matplotlib's pyplot with the headless backend, seen through the few calls made here."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        cast(Callable[[str], None], matplotlib.use)("Agg")
        return cast(_Pyplot, importlib.import_module("matplotlib.pyplot"))
    except ImportError:
        return None


def _plot(path: Path, baselines: BaselineFigures, clusters: tuple[ClusterFigures, ...]) -> bool:
    pyplot = _pyplot()
    if pyplot is None:
        return False
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for cluster in clusters:
        levels = sorted(cluster.loads)
        axes.plot(levels, [cluster.loads[level].output_throughput for level in levels], marker="o",
                  label=f"strata, {cluster.shards} shard(s)")  # fmt: skip
    for rates, style, label in (
        (baselines.batch_tokens_per_second, "--", "mlx-lm batch_generate, decode (one process)"),
        (baselines.batch_end_to_end_tokens_per_second, ":", "mlx-lm batch_generate, end to end (one process)"),
    ):
        batch_levels = sorted(rates)
        axes.plot(batch_levels, [rates[level] for level in batch_levels], marker="s",
                  linestyle=style, color="black", label=label)  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrent requests")
    axes.set_ylabel("aggregate output tokens/s")
    axes.set_title("SmolLM2-135M on this machine")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return True


def _per_row(decode: dict[int, float], end_to_end: dict[int, float]) -> str:
    """Decode / end-to-end tok/s for each row count."""
    return ", ".join(
        f"{rows} rows {rate:.1f} / {end_to_end.get(rows, float('nan')):.1f}" for rows, rate in sorted(decode.items())
    )


def _baseline_runs(baselines: BaselineFigures) -> list[str]:
    """Where the baselines are a mean: each run's figures, so the machine's drift shows."""
    if len(baselines.runs) < 2:
        return []
    described = [
        f"run {index}: one stream {run.single_stream_tokens_per_second:.1f}, batch_generate "
        + _per_row(run.batch_tokens_per_second, run.batch_end_to_end_tokens_per_second)
        for index, run in enumerate(baselines.runs, start=1)
    ]
    return [
        f"The mlx-lm figures are the mean of {len(baselines.runs)} runs, before and after the clusters "
        f"({'; '.join(described)}).",
        "",
    ]


def _transport_floor_lines(floor: TransportFloor | None, clusters: tuple[ClusterFigures, ...]) -> list[str]:
    if floor is None:
        return []
    above = [
        f"{cluster.shards} shards {_ratio(cluster.per_hop.p50, floor.ring_hop)}"
        for cluster in clusters
        if not math.isnan(cluster.per_hop.p50)
    ]
    return [
        "The floor under a hop, measured in this run (`services/app/benchmark/transport_floor.py`, "
        f"`ring_floor.py`). A one-row batch step to another process and back over a gRPC stream, halved, takes "
        f"{floor.back_to_back * 1000:.2f} ms back to back and {floor.after_compute * 1000:.2f} ms when the sender "
        f"computed for {floor.compute_burst_seconds * 1000:.0f} ms first. A ring hop with no model in it takes "
        f"{floor.ring_hop * 1000:.2f} ms one way: two processes built as shards are (an event loop owning the "
        "gRPC streams, a model thread holding each message, BLAS threads as `strata run` sets them), each "
        f"computing {floor.ring_step_seconds * 1000:.0f} ms between messages, timed from one model thread to the "
        "other. That is what every hop of a ring at batch 1 crosses before any of strata's own work (encoding "
        "activations, planning batches, caches); strata's per-hop p50 against it: "
        f"{', '.join(above) or 'n/a'}. The round trip halved reads lower because its return leg starts warm.",
        "",
    ]


def write_report(
    path: Path,
    compute_dtype: str,
    max_tokens: int,
    baselines: BaselineFigures,
    clusters: tuple[ClusterFigures, ...],
    scale_out: ScaleOutFigures | None,
    llama_cpp: LlamaCppFigures | str,
    transport_floor: TransportFloor | None = None,
) -> Path:
    single = baselines.single_stream_tokens_per_second
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores. Model: the embedded SmolLM2-135M-Instruct, "
        f"compute dtype {compute_dtype}, same BLAS for strata and the mlx-lm baselines ({blas_description()}; "
        "all in one run: compare "
        f"ratios, not absolute figures, which move with the machine's load). Requests: {max_tokens} new tokens, "
        "greedy, streamed through the gateway; metrics as in vLLM's serving benchmark.",
        "",
        "## One stream",
        "",
        "| setup | decode tok/s | vs mlx-lm (run's mean) | mlx-lm in the same minutes | vs it "
        "| per-hop overhead ms, batch 1: p50 | p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| mlx-lm `generate_step`, one process | {single:.1f} | 1.00x | | | | |",
    ]
    for cluster in clusters:
        rate = cluster.single_stream_tokens_per_second
        paired = " / ".join(f"{value:.1f}" for value in cluster.paired_mlx_lm) or "n/a"
        lines.append(
            f"| strata, {cluster.shards} shard server(s) | {rate:.1f} | {_ratio(rate, single)} | {paired} "
            f"| {_ratio(rate, cluster.paired_mlx_lm_mean)} | {_ms(cluster.per_hop.p50)} | {_ms(cluster.per_hop.p99)} |"
        )
    lines += [
        "",
        "mlx-lm in the same minutes: its one stream run in this process right before and right after the "
        "cluster's (the cluster idle meanwhile); the ratio beside it uses their mean, which the machine's "
        "drift over the run does not move. The first ratio uses the mean of the runs before and after all "
        "clusters.",
        "",
        "Per-hop overhead = (ring step time - compute time of all shards) / hops, per step, from the compute "
        "time each batch carries round the ring (the first shard's last 1024 steps, batch 1).",
        "",
        *_transport_floor_lines(transport_floor, clusters),
    ]
    for cluster in clusters:
        lines += [f"## Load, {cluster.shards} shard server(s)", "", *_load_table(cluster, baselines), ""]
    lines += [
        "mlx-lm `batch_generate` on the same weights, aggregate tok/s as decode / end to end: "
        + _per_row(baselines.batch_tokens_per_second, baselines.batch_end_to_end_tokens_per_second)
        + ". Decode is its own `generation_tps` (prefill left out of the time); end to end is its generated "
        "tokens over the whole call, prefill included, which is how the output tok/s above is defined "
        "(vLLM's: each request's prefill counts in the duration). Both are reported; like is compared with "
        "like in the end-to-end column.",
        "",
        *_baseline_runs(baselines),
        "## Memory",
        "",
        *_memory_table(clusters),
        "",
        *event_latency_lines(next((cluster.event_latency for cluster in clusters if cluster.event_latency), None)),
    ]
    for cluster in clusters:
        if cluster.step_profile is not None:
            lines += profile_lines(cluster.step_profile, cluster.shards, cluster.step_profile_concurrency)
    if scale_out is not None:
        lines += [
            "## Scale-out",
            "",
            (
                "Hosts simulated by network namespaces on one bridge, each with its own STRATA_HOME and address "
                "(only the control host has the model; shard hosts fetch their layers over the bridge), every "
                "process pinned with `taskset`: shard host A on the first core, shard host B with the control "
                "host (coordinator, gateway, load client) on the second, in every run."
                if scale_out.in_namespaces
                else "Network namespaces were unavailable: shard servers pinned one per core (`taskset`) on "
                "loopback, as one-core hosts; the coordinator, gateway and load client share the second core."
            ),
            "",
            "| concurrency | one one-core host tok/s | two hosts, one instance pipelined over both tok/s | ratio "
            "| two hosts, an instance on each tok/s | ratio |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for concurrency in sorted(scale_out.one_host):
            one = scale_out.one_host[concurrency]
            two = scale_out.two_hosts.get(concurrency, float("nan"))
            copies = scale_out.two_instances.get(concurrency, float("nan"))
            lines.append(
                f"| {concurrency} | {one:.1f} | {two:.1f} | {_ratio(two, one)} | {copies:.1f} | {_ratio(copies, one)} |"
            )
        if len(scale_out.rounds) > 1:
            lines += ["", scale_out_rounds_line(scale_out)]
        lines += [
            "",
            "The pipeline splits the layers over both hosts (for a model that fits on neither alone); with "
            "`--instances 2` each host holds the whole model and the gateway sends each request to the one "
            "running fewer (for a model that fits on each).",
            "",
        ]
    lines += _llama_cpp_section(llama_cpp, clusters, transport_floor)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_path = path.with_suffix(".png")
    if _plot(plot_path, baselines, clusters):
        lines += [f"![aggregate throughput]({plot_path.name})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _llama_cpp_section(
    llama_cpp: LlamaCppFigures | str, clusters: tuple[ClusterFigures, ...], transport_floor: TransportFloor | None
) -> list[str]:
    lines = ["## llama.cpp on the same GGUF", ""]
    if isinstance(llama_cpp, str):
        return [*lines, f"Not measured: {llama_cpp}.", ""]
    lines += [
        f"Binaries in `{llama_cpp.binaries}`, {llama_cpp.threads} threads. llama.cpp computes with the GGUF's "
        "4-bit weights, strata with the compute dtype above. `llama-server -np N` is driven by strata's own "
        "load client (the same streamed requests, prompts and new tokens), right before and right after "
        "strata's clusters (the mean of both): that is the like-for-like figure. `llama-batched-bench` "
        "(`-npp`/`-ntg` = the new tokens) and `llama-bench` run at the end.",
        "",
        f"- one stream (`llama-bench`): {llama_cpp.single_stream_tokens_per_second:.1f} tok/s",
    ]
    split = llama_cpp.two_rpc_servers_tokens_per_second
    if split is not None:
        lines.append(
            f"- one stream over two `ggml-rpc-server`s on loopback (one thread each): {split:.1f} tok/s "
            f"({_ratio(split, llama_cpp.single_stream_tokens_per_second)} of one process)"
        )
    server = llama_cpp.server_tokens_per_second
    lines += [
        "",
        "| concurrency | llama-server tok/s | llama-batched-bench tok/s | "
        + " | ".join(
            f"strata {cluster.shards} shard(s) tok/s | vs llama-server | vs batched-bench" for cluster in clusters
        )
        + " |",
        "| ---: | ---: | ---: |" + " ---: | ---: | ---: |" * len(clusters),
    ]
    levels = sorted(set(llama_cpp.batched_tokens_per_second) | set(server))
    for level in levels:
        served = server.get(level, float("nan"))
        batched = llama_cpp.batched_tokens_per_second.get(level, float("nan"))
        cells: list[str] = []
        for cluster in clusters:
            rate = cluster.loads[level].output_throughput if level in cluster.loads else float("nan")
            cells += [f"{rate:.1f}", _ratio(rate, served), _ratio(rate, batched)]
        lines.append(f"| {level} | {served:.1f} | {batched:.1f} | " + " | ".join(cells) + " |")
    return [*lines, "", *speed_targets(llama_cpp, clusters, transport_floor), ""]


def speed_targets(
    llama_cpp: LlamaCppFigures, clusters: tuple[ClusterFigures, ...], transport_floor: TransportFloor | None
) -> list[str]:
    """The speed issue's targets, as ratios of this run."""
    lines = ["### Targets", ""]
    by_shards = {cluster.shards: cluster for cluster in clusters}
    for cluster in clusters:
        for level in (16, 32):
            served = llama_cpp.server_tokens_per_second.get(level)
            if served is None or level not in cluster.loads:
                continue
            ratio = cluster.loads[level].output_throughput / served
            lines.append(
                f"- aggregate at {level}, {cluster.shards} shard(s): {ratio:.2f}x `llama-server` "
                f"(target 1.0x: {'met' if ratio >= 1.0 else 'not met'})"
            )
    one = by_shards.get(1)
    if one is not None and llama_cpp.single_stream_tokens_per_second > 0:
        ratio = one.single_stream_tokens_per_second / llama_cpp.single_stream_tokens_per_second
        lines.append(
            f"- one stream, 1 shard: {ratio:.2f}x `llama-bench` (target 0.5x: {'met' if ratio >= 0.5 else 'not met'})"
        )
    two = by_shards.get(2)
    if one is not None and two is not None and transport_floor is not None:
        one_step = 1 / one.single_stream_tokens_per_second
        two_step = 1 / two.single_stream_tokens_per_second
        bound = one_step + 2 * 1.2 * transport_floor.ring_hop
        lines.append(
            f"- one stream, 2 shards: a step of {two_step * 1e3:.1f} ms against the bound 1-shard step "
            f"{one_step * 1e3:.1f} ms + 2 hops x 1.2 x ring floor {transport_floor.ring_hop * 1e3:.2f} ms = "
            f"{bound * 1e3:.1f} ms ({'met' if two_step <= bound else 'not met'})"
        )
    return lines
