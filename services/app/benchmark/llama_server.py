"""llama.cpp's `llama-server` driven by strata's own load client: the like-for-like aggregate figure.

The same streamed `/v1/completions` requests (same prompts, greedy, the same number of new tokens)
go to `llama-server -np N` as to strata's gateway, and the same client times them, so the ratio
compares servers, not benchmarks. One server with as many slots as the highest concurrency serves
every level (a slot left idle costs nothing); each slot gets room for its prompt and the new tokens.
"""

import asyncio
import subprocess
import time
from pathlib import Path

import httpx

from services.app.benchmark.load_client import run_load
from services.app.ports import free_port

START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 10.0
_HEALTH_POLL_SECONDS = 0.25
_CONTEXT_PER_SLOT_BEYOND_NEW_TOKENS = 128
MODEL_NAME = "llama-server"
_WARM_UP_ATTEMPTS = 5


class LlamaServerError(RuntimeError):
    """The server did not start or did not answer; the message says how."""


def llama_server_command(
    binaries: Path, gguf: Path, *, threads: int, slots: int, max_tokens: int, port: int
) -> list[str]:
    """Pure: the command line of a server with `slots` parallel sequences on 127.0.0.1:`port`."""
    context = slots * (max_tokens + _CONTEXT_PER_SLOT_BEYOND_NEW_TOKENS)
    return [
        str(binaries / "llama-server"),
        "-m",
        str(gguf),
        "-t",
        str(threads),
        "-np",
        str(slots),
        "-c",
        str(context),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _wait_until_healthy(url: str, process: "subprocess.Popen[bytes]") -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LlamaServerError(f"llama-server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(_HEALTH_POLL_SECONDS)
    raise LlamaServerError(f"llama-server was not healthy within {START_TIMEOUT_SECONDS:.0f} s")


def _warm_up(url: str) -> None:
    """One short request, tried a few times: a server that just turned healthy may still drop the first
    connection (seen once in a `make bench` run)."""
    for attempt in range(_WARM_UP_ATTEMPTS):
        try:
            asyncio.run(run_load(url, MODEL_NAME, 1, 1, 8))
            return
        except httpx.HTTPError:
            if attempt == _WARM_UP_ATTEMPTS - 1:
                raise
            time.sleep(1.0)


def measure_llama_server(
    binaries: Path, gguf: Path, threads: int, max_tokens: int, concurrencies: tuple[int, ...]
) -> dict[int, float]:
    """Concurrency -> output tok/s of `llama-server` under strata's load client (2 x N requests a level)."""
    port = free_port()
    command = llama_server_command(
        binaries, gguf, threads=threads, slots=max(concurrencies), max_tokens=max_tokens, port=port
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process)
        _warm_up(url)
        rates: dict[int, float] = {}
        for concurrency in concurrencies:
            result = asyncio.run(run_load(url, MODEL_NAME, concurrency, max(4, 2 * concurrency), max_tokens))
            rates[concurrency] = result.output_throughput
            print(f"  llama-server, concurrency {concurrency:2d}: {rates[concurrency]:7.1f} tok/s", flush=True)
        return rates
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
