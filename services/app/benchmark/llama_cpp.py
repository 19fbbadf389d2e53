"""llama.cpp on the same GGUF, side by side, where its binaries are built.

`../shared/tools/build-llama-cpp` (or any llama.cpp build) provides `llama-bench`,
`llama-batched-bench` and `ggml-rpc-server`; `STRATA_LLAMA_CPP_BIN` names their folder (default: the
tool's `~/.cache/strata-llama-cpp/llama.cpp/build/bin`). Without them the report says so and goes on.
llama.cpp runs the GGUF's own 4-bit weights, strata the compute dtype: a reference point, not a
like-for-like ratio.
"""

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter

from services.app.ports import free_port

RUN_TIMEOUT_SECONDS = 600.0
RPC_SERVER_START_SECONDS = 2.0


@dataclass(frozen=True)
class LlamaCppFigures:
    binaries: Path
    threads: int
    single_stream_tokens_per_second: float
    batched_tokens_per_second: dict[int, float]
    """Aggregate generation tok/s of `llama-batched-bench` with that many parallel sequences."""
    two_rpc_servers_tokens_per_second: float | None
    """One stream split over two `ggml-rpc-server`s on loopback (one thread each); None if it failed."""
    server_tokens_per_second: dict[int, float] = field(default_factory=dict[int, float])
    """`llama-server` under strata's load client, per concurrency: the mean of the runs before and
    after strata's clusters (the like-for-like aggregate); empty when it did not run."""


def llama_cpp_binaries() -> Path | None:
    configured = os.environ.get("STRATA_LLAMA_CPP_BIN")
    folder = Path(configured) if configured else Path.home() / ".cache/strata-llama-cpp/llama.cpp/build/bin"
    needed = ("llama-bench", "llama-batched-bench", "ggml-rpc-server", "llama-server")
    return folder if all(os.access(folder / name, os.X_OK) for name in needed) else None


def _run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=RUN_TIMEOUT_SECONDS).stdout


class _BenchResult(BaseModel):
    """One test of `llama-bench -o json` (other fields ignored)."""

    model_config = ConfigDict(frozen=True)

    n_gen: int = 0
    avg_ts: float = 0.0


def generation_rate(bench_json: str) -> float:
    """tok/s of the text-generation test in `llama-bench -o json` output."""
    for result in TypeAdapter(list[_BenchResult]).validate_json(bench_json):
        if result.n_gen > 0:
            return result.avg_ts
    raise ValueError("llama-bench printed no generation result")


def parse_batched_bench(table: str) -> dict[int, float]:
    """Parallel sequences -> generation tok/s, from `llama-batched-bench`'s markdown table."""
    header: list[str] | None = None
    rates: dict[int, float] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) < 2:
            continue
        if header is None:
            if "B" in cells and "S_TG t/s" in cells:
                header = cells
            continue
        try:
            rates[int(cells[header.index("B")])] = float(cells[header.index("S_TG t/s")])
        except (ValueError, IndexError):
            continue  # the separator row
    return rates


def measure_llama_cpp(gguf: Path, threads: int, max_tokens: int, concurrencies: tuple[int, ...]) -> LlamaCppFigures:
    binaries = llama_cpp_binaries()
    if binaries is None:
        raise FileNotFoundError("llama.cpp binaries not found (run ../shared/tools/build-llama-cpp)")
    generate = ["-p", "0", "-n", str(max_tokens), "-r", "3", "-o", "json"]
    single = generation_rate(_run([str(binaries / "llama-bench"), "-m", str(gguf), "-t", str(threads), *generate]))
    context = 2 * max_tokens * max(concurrencies)
    batched = parse_batched_bench(
        _run(
            [
                str(binaries / "llama-batched-bench"),
                "-m",
                str(gguf),
                "-t",
                str(threads),
                "-c",
                str(context),
                "-npp",
                str(max_tokens),
                "-ntg",
                str(max_tokens),
                "-npl",
                ",".join(str(concurrency) for concurrency in concurrencies),
            ]
        )
    )
    return LlamaCppFigures(binaries, threads, single, batched, _two_rpc_servers(binaries, gguf, generate))


def _two_rpc_servers(binaries: Path, gguf: Path, generate: list[str]) -> float | None:
    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen(
            [str(binaries / "ggml-rpc-server"), "-p", str(port), "-t", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        time.sleep(RPC_SERVER_START_SECONDS)
        endpoints = ",".join(f"127.0.0.1:{port}" for port in ports)
        output = _run(
            [
                str(binaries / "llama-bench"),
                "-m",
                str(gguf),
                "--rpc",
                endpoints,
                "-dev",
                "RPC0/RPC1",
                "-t",
                "1",
                *generate,
            ]
        )
        return generation_rate(output)
    except (subprocess.SubprocessError, ValueError) as error:
        print(f"  llama.cpp over two RPC servers failed: {error}", flush=True)
        return None
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
