"""`make bench`'s like-for-like peer: llama-server's command line, the bracketing mean and the targets."""

import math
from pathlib import Path

import pytest

from services.app.benchmark.llama_cpp import LlamaCppFigures
from services.app.benchmark.llama_server import llama_server_command
from services.app.benchmark.load_client import LoadResult, RequestTiming
from services.app.benchmark.report import ClusterFigures, HopOverhead, speed_targets
from services.app.benchmark.run_benchmark import mean_rates
from services.app.benchmark.transport_floor import TransportFloor

pytestmark = pytest.mark.unit


def test_one_server_has_a_slot_per_stream_and_room_for_each() -> None:
    command = llama_server_command(Path("/bin"), Path("/m.gguf"), threads=2, slots=32, max_tokens=64, port=5000)
    assert command[0] == "/bin/llama-server"
    assert command[command.index("-np") + 1] == "32"
    assert command[command.index("-c") + 1] == str(32 * (64 + 128))
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("-t") + 1] == "2"


def test_the_runs_before_and_after_are_averaged_per_level() -> None:
    assert mean_rates({1: 100.0, 16: 200.0}, {1: 120.0, 16: 220.0, 32: 300.0}) == {1: 110.0, 16: 210.0, 32: 300.0}
    assert mean_rates({}, {}) == {}


def _load(concurrency: int, tokens_per_second: float) -> LoadResult:
    timing = RequestTiming(0.1, (), round(tokens_per_second), 1.0)
    return LoadResult(concurrency, (timing,), 1.0)


def _cluster(shards: int, one_stream: float, loads: dict[int, float]) -> ClusterFigures:
    return ClusterFigures(
        shards=shards,
        single_stream_tokens_per_second=one_stream,
        per_hop=HopOverhead(math.nan, math.nan),
        loads={level: _load(level, rate) for level, rate in loads.items()},
        shard_figures=(),
    )


def test_the_targets_are_ratios_of_the_run() -> None:
    llama_cpp = LlamaCppFigures(
        binaries=Path("/bin"),
        threads=2,
        single_stream_tokens_per_second=118.0,
        batched_tokens_per_second={16: 248.0},
        two_rpc_servers_tokens_per_second=None,
        server_tokens_per_second={16: 200.0, 32: 180.0},
    )
    clusters = (_cluster(1, 59.0, {16: 210.0, 32: 90.0}), _cluster(2, 50.0, {16: 150.0}))
    floor = TransportFloor(
        back_to_back=0.001, after_compute=0.001, compute_burst_seconds=0.01, ring_hop=0.002, ring_step_seconds=0.02
    )

    lines = speed_targets(llama_cpp, clusters, floor)

    assert "- aggregate at 16, 1 shard(s): 1.05x `llama-server` (target 1.0x: met)" in lines
    assert "- aggregate at 32, 1 shard(s): 0.50x `llama-server` (target 1.0x: not met)" in lines
    assert "- aggregate at 16, 2 shard(s): 0.75x `llama-server` (target 1.0x: not met)" in lines
    assert "- one stream, 1 shard: 0.50x `llama-bench` (target 0.5x: met)" in lines
    # 1/50 s = 20.0 ms against 1/59 s = 16.9 ms + 2 x 1.2 x 2 ms = 21.8 ms.
    assert any(
        line.startswith("- one stream, 2 shards: a step of 20.0 ms") and line.endswith("(met)") for line in lines
    )
