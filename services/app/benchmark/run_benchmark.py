"""`strata bench` / `make bench`: real clusters against single-process mlx-lm, in one run, as ratios.

For 1, 2 and 3 shard servers (separate processes on 127.0.0.1) it measures one stream's decode rate,
then TTFT, TPOT, ITL and aggregate output throughput at each concurrency; the per-hop overhead
((ring step time - compute time) / hops, from the shards' own counters); each shard's peak RSS
against the bytes of its layers in the compute dtype. Baselines: mlx-lm `generate_step` for one
stream and `batch_generate` at the same concurrencies, on the same weights, dtype and BLAS. The
scale-out run pins one shard per core ("two one-core hosts") against one pinned shard holding the
whole model, with the coordinator, gateway and load client on the same core in both runs.
"""

import asyncio
import contextlib
import dataclasses
import os
import statistics
import subprocess
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from coordinator.placement import stage_weight_bytes
from services.app.benchmark.baselines import BaselineFigures, BaselineModel, averaged
from services.app.benchmark.event_latency import EventLatency, measure_event_latency
from services.app.benchmark.llama_cpp import LlamaCppFigures, llama_cpp_binaries, measure_llama_cpp
from services.app.benchmark.llama_server import LlamaServerError, measure_llama_server
from services.app.benchmark.load_client import LoadResult, run_load
from services.app.benchmark.ready_instances import ready_instance_count
from services.app.benchmark.report import (
    ClusterFigures,
    HopOverhead,
    ScaleOutFigures,
    ShardFigures,
    scale_out_from_rounds,
    write_report,
)
from services.app.benchmark.scale_out import REQUESTS_PER_SLOT, measure_scale_out_in_namespaces, namespaces_unavailable
from services.app.benchmark.step_profile import StepProfile, finish_recording, start_recording
from services.app.benchmark.transport_floor import measure_transport_floor
from services.app.local_cluster import LocalClusterOptions, gateway_ready, start_services, stop_services
from services.app.ports import free_port
from services.kernel.compute_dtype import ComputeDtype
from services.kernel.ids import ModelId
from services.kernel.settings import home_sharing_models, models_root
from services.models.embedded_model import EmbeddedModelMissingError, find_embedded_gguf
from services.models.model_config import read_model_config
from services.models.model_spec import model_spec
from services.platform.auth import cluster_security, write_cluster_token
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc, shard_pb2, shard_pb2_grpc

READY_TIMEOUT_SECONDS = 300.0
PROFILE_CONCURRENCY = 16
PROFILE_LOAD_ROUNDS = 6
"""Load rounds at most while py-spy records (each one request per stream): the load outlasts the recording."""


@dataclass(frozen=True)
class BenchOptions:
    home: Path
    model_id: ModelId
    compute_dtype: ComputeDtype
    shard_counts: tuple[int, ...]
    concurrencies: tuple[int, ...]
    max_tokens: int
    prefill_step_size: int
    output: Path
    scale_out: bool


@dataclass(frozen=True)
class _Running:
    gateway_url: str
    coordinator_address: str
    shard_addresses: tuple[str, ...]
    shard_pids: tuple[int, ...]
    stages: tuple[tuple[int, int], ...]


@contextlib.contextmanager
def _cluster(
    options: BenchOptions, shards: int, cores: Mapping[str, int] | None = None, instances: int = 1
) -> Generator[_Running]:
    with home_sharing_models(options.home) as home:
        yield from _cluster_in(options, home, shards, cores, instances)


def _cluster_in(
    options: BenchOptions, home: Path, shards: int, cores: Mapping[str, int] | None, instances: int
) -> Generator[_Running]:
    token = cluster_security().token
    if token is not None:  # the private home's services use this process's token
        write_cluster_token(home, token)
    gateway_port, coordinator_port = free_port(), free_port()
    first_shard_port = free_port(consecutive=shards)
    local = LocalClusterOptions(
        home=home,
        host="127.0.0.1",
        gateway_port=gateway_port,
        coordinator_port=coordinator_port,
        first_shard_port=first_shard_port,
        shards=shards,
        model_id=options.model_id,
        prefill_step_size=options.prefill_step_size,
        compute_dtype=options.compute_dtype,
        instances=instances,
    )
    children = start_services(local, cores)
    try:
        url = f"http://127.0.0.1:{gateway_port}"
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        coordinator = f"127.0.0.1:{coordinator_port}"
        while not (gateway_ready(url) and ready_instance_count(coordinator) >= instances):
            if time.monotonic() > deadline or any(child.poll() is not None for _, child in children):
                raise RuntimeError(f"the {shards}-shard cluster did not become ready")
            time.sleep(0.25)
        with cluster_sync_channel(coordinator) as channel:
            state = coordinator_pb2_grpc.CoordinatorStub(channel).GetState(coordinator_pb2.GetStateRequest())
        instance = next(instance for instance in state.instances if instance.status == "ready")
        pids = {f"127.0.0.1:{first_shard_port + index}": child.pid for index, (_, child) in enumerate(children[1:-1])}
        strangers = [stage.address for stage in instance.stages if stage.address not in pids]
        if strangers:
            raise RuntimeError(f"shard servers outside this benchmark joined its cluster: {', '.join(strangers)}")
        yield _Running(
            gateway_url=url,
            coordinator_address=coordinator,
            shard_addresses=tuple(stage.address for stage in instance.stages),
            shard_pids=tuple(pids[stage.address] for stage in instance.stages),
            stages=tuple((stage.start_layer, stage.end_layer) for stage in instance.stages),
        )
    finally:
        stop_services(children)


def _stats(address: str) -> shard_pb2.ShardStats:
    with cluster_sync_channel(address) as channel:
        return shard_pb2_grpc.ShardStub(channel).GetStats(shard_pb2.GetStatsRequest(), timeout=30)


def _peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory (Linux VmHWM)."""
    # The shard is a child of `taskset` when pinned; its python process is the same pid after exec.
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _single_stream(running: _Running, options: BenchOptions) -> tuple[float, HopOverhead]:
    """One stream's decode tok/s, and the per-hop overhead in seconds (nan for one shard)."""
    result = asyncio.run(run_load(running.gateway_url, options.model_id, 1, 1, max(options.max_tokens, 128)))
    timing = result.timings[0]
    decode_rate = (timing.output_tokens - 1) / (timing.latency - timing.time_to_first_token)
    if len(running.shard_addresses) < 2:
        return decode_rate, HopOverhead(float("nan"), float("nan"))
    # The first shard's percentiles: per step, from the compute time each batch carried round the ring.
    first = _stats(running.shard_addresses[0])
    return decode_rate, HopOverhead(first.hop_overhead_p50_seconds, first.hop_overhead_p99_seconds)


def _load_levels(running: _Running, options: BenchOptions) -> tuple[dict[int, LoadResult], dict[str, int]]:
    """Runs every concurrency level; returns the results and each shard's largest KV cache seen."""
    results: dict[int, LoadResult] = {}
    peak_kv: dict[str, int] = dict.fromkeys(running.shard_addresses, 0)

    async def watch_kv(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for address in running.shard_addresses:
                stats = await asyncio.to_thread(_stats, address)
                peak_kv[address] = max(peak_kv[address], stats.kv_cache_bytes)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)

    async def levels() -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_kv(stop))
        for concurrency in options.concurrencies:
            requests = max(4, 2 * concurrency)
            results[concurrency] = await run_load(
                running.gateway_url, options.model_id, concurrency, requests, options.max_tokens
            )
            print(f"  concurrency {concurrency:2d}: {results[concurrency].output_throughput:7.1f} tok/s", flush=True)
        stop.set()
        await watcher

    asyncio.run(levels())
    return results, peak_kv


def _profile_step(running: _Running, options: BenchOptions) -> StepProfile | str:
    """py-spy on the (first) shard while the load client keeps PROFILE_CONCURRENCY streams running."""
    output = options.home / f"step-profile-{os.getpid()}.txt"
    output.unlink(missing_ok=True)
    recording = start_recording(running.shard_pids[0], output)
    if isinstance(recording, str):
        return recording

    async def load_while_recording() -> None:
        for _ in range(PROFILE_LOAD_ROUNDS):
            if recording.poll() is not None:
                return
            await run_load(
                running.gateway_url, options.model_id, PROFILE_CONCURRENCY, PROFILE_CONCURRENCY, options.max_tokens
            )

    try:
        asyncio.run(load_while_recording())
        return finish_recording(recording, output)
    finally:
        if recording.poll() is None:
            recording.kill()
            recording.wait()
        output.unlink(missing_ok=True)


def _measure_cluster(options: BenchOptions, shards: int, paired: BaselineModel) -> ClusterFigures:
    print(f"strata with {shards} shard server(s)", flush=True)
    with _cluster(options, shards) as running:
        asyncio.run(run_load(running.gateway_url, options.model_id, 1, 1, 8))  # warm up
        # mlx-lm's one stream right before and right after the cluster's (the cluster sits idle): a ratio
        # that the machine's drift over the run's minutes does not move.
        before = paired.one_stream_rate()
        decode_rate, per_hop = _single_stream(running, options)
        after = paired.one_stream_rate()
        print(
            f"  one stream: {decode_rate:.1f} tok/s (mlx-lm in the same minutes {before:.1f}, {after:.1f}), "
            f"per-hop overhead p50 {per_hop.p50 * 1000:.2f} ms (p99 {per_hop.p99 * 1000:.2f})",
            flush=True,
        )
        results, peak_kv = _load_levels(running, options)
        step_profile: StepProfile | str | None = None
        if shards == 1:
            step_profile = _profile_step(running, options)
            print(f"  step profile at {PROFILE_CONCURRENCY} streams: {_profile_summary(step_profile)}", flush=True)
        event_latency: EventLatency | None = None
        if shards == options.shard_counts[0]:
            event_latency = measure_event_latency(running.gateway_url, running.coordinator_address, options.model_id, 1)
            print(
                f"  committed event -> /v1/cluster/events: median {event_latency.median_seconds * 1000:.1f} ms "
                f"(max {event_latency.max_seconds * 1000:.1f})",
                flush=True,
            )
        spec = model_spec(options.model_id, models_root(options.home) / options.model_id, options.compute_dtype)
        shard_figures = tuple(
            ShardFigures(
                layers=stage,
                peak_rss_bytes=_peak_rss_bytes(pid),
                layer_bytes=stage_weight_bytes(spec, *stage),
                peak_kv_cache_bytes=peak_kv[address],
                batch_invariant=_stats(address).batch_invariant,
                native_attention=_stats(address).native_attention,
            )
            for address, pid, stage in zip(running.shard_addresses, running.shard_pids, running.stages, strict=True)
        )
    return ClusterFigures(
        shards,
        decode_rate,
        per_hop,
        results,
        shard_figures,
        (before, after),
        event_latency,
        step_profile,
        PROFILE_CONCURRENCY,
    )


def _profile_summary(profile: StepProfile | str) -> str:
    if isinstance(profile, str):
        return f"not profiled ({profile})"
    top = profile.functions[0] if profile.functions else None
    return f"{profile.samples} samples" + (f", most in {top.function} ({top.self_share:.0%})" if top else "")


def _measure_scale_out(options: BenchOptions, concurrencies: tuple[int, ...]) -> ScaleOutFigures | None:
    """In network namespaces where they can be made; else pinned processes on loopback."""
    problem = namespaces_unavailable()
    if problem is None:
        rounds = measure_scale_out_in_namespaces(options.home, options.model_id, concurrencies, options.max_tokens)
        return scale_out_from_rounds(rounds, in_namespaces=True)
    print(f"scale-out in network namespaces unavailable ({problem}): pinned processes on loopback", flush=True)
    return _measure_scale_out_on_loopback(options, concurrencies)


def _measure_scale_out_on_loopback(options: BenchOptions, concurrencies: tuple[int, ...]) -> ScaleOutFigures | None:
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        print("scale-out run skipped: it needs two cores", flush=True)
        return None
    first, second = sorted(cores)[:2]
    control = {"coordinator": second, "gateway": second}
    one_host: dict[int, float] = {}
    two_hosts: dict[int, float] = {}
    two_instances: dict[int, float] = {}
    own_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {second})  # the load client sits with the gateway in both runs
    try:
        both = {**control, "shard 1": first, "shard 2": second}
        for label, pinning, instances, target in (
            ("one one-core host", {**control, "shard 1": first}, 1, one_host),
            ("two one-core hosts, one instance over both", both, 1, two_hosts),
            ("two one-core hosts, an instance on each", both, 2, two_instances),
        ):
            shards = 1 if label.startswith("one") else 2
            print(f"scale-out: {label}", flush=True)
            with _cluster(options, shards, pinning, instances) as running:
                asyncio.run(run_load(running.gateway_url, options.model_id, 1, 1, 8))
                for concurrency in concurrencies:
                    result = asyncio.run(
                        run_load(
                            running.gateway_url,
                            options.model_id,
                            concurrency,
                            REQUESTS_PER_SLOT * concurrency,
                            options.max_tokens,
                        )
                    )
                    target[concurrency] = result.output_throughput
                    print(f"  concurrency {concurrency}: {result.output_throughput:.1f} tok/s", flush=True)
    finally:
        os.sched_setaffinity(0, own_affinity)
    return ScaleOutFigures(one_host, two_hosts, two_instances, in_namespaces=False)


def run_benchmark(options: BenchOptions) -> Path:
    model_dir = models_root(options.home) / options.model_id
    print(f"baselines: mlx-lm in this process ({options.compute_dtype})", flush=True)
    mlx_lm = BaselineModel(model_dir, options.compute_dtype, options.max_tokens, options.prefill_step_size)
    baselines: BaselineFigures = mlx_lm.measure(options.concurrencies)
    print(f"  one stream {baselines.single_stream_tokens_per_second:.1f} tok/s", flush=True)
    # llama-server right before and right after strata's clusters, under the same load client: the
    # like-for-like aggregate, its mean untouched by the machine's drift over the run.
    server_before = _measure_llama_server(options)
    clusters = tuple(_measure_cluster(options, shards, mlx_lm) for shards in options.shard_counts)
    server_after = _measure_llama_server(options)
    # Again after the clusters: the ratios use the mean, so a drift of the machine's speed during the
    # run weighs on both sides alike.
    print("baselines again, after the clusters", flush=True)
    again = mlx_lm.measure(options.concurrencies)
    print(f"  one stream {again.single_stream_tokens_per_second:.1f} tok/s", flush=True)
    del mlx_lm  # its weights are not needed for the rest of the run
    baselines = averaged((baselines, again))
    print("gRPC floor under a hop", flush=True)
    floor = measure_transport_floor(read_model_config(model_dir).hidden_size)
    print(
        f"  one way {floor.back_to_back * 1e3:.2f} ms, {floor.after_compute * 1e3:.2f} ms after compute, "
        f"{floor.ring_hop * 1e3:.2f} ms in a ring with no model",
        flush=True,
    )
    scale_out = _measure_scale_out(options, (16, 32)) if options.scale_out else None
    llama_cpp = _measure_llama_cpp(options)
    if isinstance(llama_cpp, LlamaCppFigures):
        llama_cpp = dataclasses.replace(llama_cpp, server_tokens_per_second=mean_rates(server_before, server_after))
    return write_report(
        options.output, options.compute_dtype, options.max_tokens, baselines, clusters, scale_out, llama_cpp, floor
    )


def _measure_llama_server(options: BenchOptions) -> dict[int, float]:
    binaries = llama_cpp_binaries()
    if binaries is None:
        return {}
    try:
        gguf = find_embedded_gguf()
    except EmbeddedModelMissingError:
        return {}
    print("llama-server on the same GGUF, under strata's load client", flush=True)
    threads = len(os.sched_getaffinity(0))
    try:
        return measure_llama_server(binaries, gguf, threads, options.max_tokens, options.concurrencies)
    except (OSError, subprocess.SubprocessError, LlamaServerError, httpx.HTTPError) as error:
        print(f"  llama-server failed: {error}", flush=True)
        return {}


def mean_rates(*runs: dict[int, float]) -> dict[int, float]:
    """Pure: per concurrency, the mean of the runs that measured it."""
    levels = sorted({level for run in runs for level in run})
    return {level: statistics.fmean(run[level] for run in runs if level in run) for level in levels}


def _measure_llama_cpp(options: BenchOptions) -> LlamaCppFigures | str:
    if llama_cpp_binaries() is None:
        return "its binaries are not built (../shared/tools/build-llama-cpp, or set STRATA_LLAMA_CPP_BIN)"
    try:
        gguf = find_embedded_gguf()
    except EmbeddedModelMissingError as error:
        return str(error)
    print("llama.cpp on the same GGUF", flush=True)
    threads = len(os.sched_getaffinity(0))
    try:
        figures = measure_llama_cpp(gguf, threads, options.max_tokens, options.concurrencies)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        return f"llama.cpp failed: {error}"
    print(f"  one stream {figures.single_stream_tokens_per_second:.1f} tok/s", flush=True)
    return figures
