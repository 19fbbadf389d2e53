"""`strata run`: a whole cluster on this host, each service its own process on 127.0.0.1.

Starts one coordinator, N shard servers and one gateway, waits until the gateway can serve, prints
the URL and a curl line, and supervises them as systemd would: a child that dies is restarted with a
growing backoff (services/app/supervision.py). Ctrl-C or SIGTERM stops every child. Children also get
SIGTERM from the kernel if this process dies without cleaning up (Linux).
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from services.app.logging_options import child_logging_arguments
from services.app.supervision import restart_delay
from services.kernel.ids import ModelId
from services.platform.logging_setup import LogSettings
from services.platform.metrics_server import DEFAULT_METRICS_PORT
from services.platform.security_options import TlsFiles
from shard_server.batch_plan import RING_WAVES_VARIABLE
from shard_server.blas_threads import SHARED_THREADS_VARIABLE

READY_TIMEOUT_SECONDS = 900.0
STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LocalClusterOptions:
    home: Path
    host: str
    gateway_port: int
    coordinator_port: int
    first_shard_port: int
    shards: int
    model_id: ModelId
    prefill_step_size: int
    compute_dtype: str
    tls: TlsFiles | None = None
    """Mutual TLS for every child; the cluster token is the home's (children share the home)."""
    api_key_file: Path | None = None
    instances: int = 1
    """Instances of the model (coordinator.planner): 1 pipelines it over every shard server."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """First `/metrics` port: the coordinator's, then one per shard; 0: each picks a free one; default:
    each child's gRPC port + 1000 (the gRPC ports are distinct, so these are too)."""
    log_settings: LogSettings | None = None
    """The logging every child inherits (a log file: one of its own beside it); None: each one's default."""


def _metrics_port(options: LocalClusterOptions, index: int) -> str:
    """The `--metrics-port` of child `index` (0: the coordinator, then the shards)."""
    if options.metrics_port in (0, DEFAULT_METRICS_PORT):
        return str(options.metrics_port)
    return str(options.metrics_port + index)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _strata(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "services.app.cli", *arguments]


def shard_environment(shards: int, instances: int = 1) -> dict[str, str]:
    """Shards on one host share its cores. Each ring keeps one wave of requests in flight, so one of
    its shards computes at a time, on the cores of its instance (all of them for one instance), with
    every running request in its batch: two waves on shared cores halve each batch and read each
    weight twice as often per token (measured interleaved, 2 cores, 16 streams: 2 shards 1.16x the
    tokens/s of two waves, 3 shards 1.41x). Idle OpenBLAS threads must sleep at once rather than spin,
    or they steal the core the next shard needs."""
    environment = dict(os.environ)
    cores = len(os.sched_getaffinity(0))
    environment.setdefault("OPENBLAS_NUM_THREADS", str(cores))
    environment.setdefault(SHARED_THREADS_VARIABLE, str(max(1, cores // max(1, instances))))
    if shards > 1:
        environment.setdefault("OPENBLAS_THREAD_TIMEOUT", "8")
    if shards > instances:
        environment.setdefault(RING_WAVES_VARIABLE, "1")
    return environment


def _commands(options: LocalClusterOptions, *, first_start: bool = True) -> list[tuple[str, list[str]]]:
    """Each child's name and command line; `first_start` False: a restart, which keeps the coordinator's state."""
    # The children know each other's addresses: no mDNS, so a local cluster never announces on the LAN.
    home = ["--home", str(options.home), "--no-mdns", *(options.tls.arguments() if options.tls else [])]
    coordinator = f"{options.host}:{options.coordinator_port}"
    commands = [
        (
            "coordinator",
            _strata(
                "coordinator",
                *home,
                "--host",
                options.host,
                "--port",
                str(options.coordinator_port),
                "--model",
                options.model_id,
                "--min-shards",
                str(options.shards),
                "--prefill-step-size",
                str(options.prefill_step_size),
                "--compute-dtype",
                options.compute_dtype,
                "--instances",
                str(options.instances),
                "--metrics-port",
                _metrics_port(options, 0),
                # Every shard starts anew too: a state from an earlier run would point at dead shards.
                # A restart within this run keeps the state: the shards and the gateway still hold to it.
                *(["--fresh-state"] if first_start else []),
            ),
        )
    ]
    for index in range(options.shards):
        port = options.first_shard_port + index
        commands.append(
            (
                f"shard {index + 1}",
                _strata(
                    "shard",
                    *home,
                    "--host",
                    options.host,
                    "--port",
                    str(port),
                    "--coordinator",
                    coordinator,
                    "--metrics-port",
                    _metrics_port(options, index + 1),
                ),
            )
        )
    commands.append(
        (
            "gateway",
            _strata(
                "gateway",
                *home,
                "--host",
                options.host,
                "--port",
                str(options.gateway_port),
                "--coordinator",
                coordinator,
                *(["--api-key-file", str(options.api_key_file)] if options.api_key_file else []),
            ),
        )
    )
    if options.log_settings is not None:
        settings = options.log_settings
        commands = [(name, [*command, *child_logging_arguments(settings, name)]) for name, command in commands]
    return commands


Children = list[tuple[str, subprocess.Popen[bytes]]]


def _start_child(
    name: str, command: list[str], options: LocalClusterOptions, core: int | None
) -> subprocess.Popen[bytes]:
    environment = shard_environment(options.shards, options.instances) if name.startswith("shard") else None
    pinned = command if core is None else ["taskset", "-c", str(core), *command]
    if core is not None and environment is not None:
        # A shard pinned to a core of its own (a simulated host): one thread, and one wave per shard.
        environment = {**environment, "OPENBLAS_NUM_THREADS": "1", SHARED_THREADS_VARIABLE: "1"}
        environment.pop(RING_WAVES_VARIABLE, None)
    return subprocess.Popen(pinned, env=environment, preexec_fn=_die_with_parent)  # noqa: PLW1509


def start_services(options: LocalClusterOptions, cores: Mapping[str, int] | None = None) -> Children:
    """Starts every service as its own process; `cores` pins a service (by name) to one CPU core."""
    return [
        (name, _start_child(name, command, options, (cores or {}).get(name))) for name, command in _commands(options)
    ]


def gateway_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _curl_line(url: str, model_id: ModelId) -> str:
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
    }
    return f"curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{json.dumps(body)}'"


@dataclass
class _Supervised:
    """One child of `strata run` and what its supervision remembers."""

    name: str
    process: subprocess.Popen[bytes]
    started_at: float
    consecutive_exits: int = 0
    restart_at: float | None = None
    """When a dead child is due to start again (None while it runs)."""


def run_local_cluster(options: LocalClusterOptions) -> int:
    stop_requested = False

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    supervised: list[_Supervised] = []
    url = f"http://{options.host}:{options.gateway_port}"
    exit_code = 0
    try:
        started = time.monotonic()
        supervised = [_Supervised(name, process, started) for name, process in start_services(options)]
        restart_commands = dict(_commands(options, first_start=False))
        announced = False
        while not stop_requested:
            now = time.monotonic()
            for child in supervised:
                _supervise(child, restart_commands[child.name], options, now)
            if not announced and gateway_ready(url):
                announced = True
                print(f"\nstrata is serving {options.model_id} at {url}\n\n  {_curl_line(url, options.model_id)}\n")
                print("Press Ctrl-C to stop.\n", flush=True)
            if not announced and now - started > READY_TIMEOUT_SECONDS:
                print(f"strata: not ready after {READY_TIMEOUT_SECONDS:.0f} s; stopping", file=sys.stderr)
                exit_code = 1
                break
            time.sleep(0.25)
    finally:
        if stop_services([(child.name, child.process) for child in supervised if child.restart_at is None]):
            exit_code = 1
    return exit_code


def _supervise(child: _Supervised, command: list[str], options: LocalClusterOptions, now: float) -> None:
    """Notices a child's exit and schedules its restart; restarts it when due."""
    if child.restart_at is None:
        status = child.process.poll()
        if status is None:
            return
        decision = restart_delay(consecutive_exits=child.consecutive_exits, uptime_seconds=now - child.started_at)
        child.consecutive_exits = decision.consecutive_exits
        child.restart_at = now + decision.delay_seconds
        print(
            f"strata: {child.name} exited with status {status}; restarting in {decision.delay_seconds:g} s"
            f" (restart {decision.consecutive_exits})",
            file=sys.stderr,
            flush=True,
        )
        return
    if now >= child.restart_at:
        child.process = _start_child(child.name, command, options, None)
        child.started_at = now
        child.restart_at = None
        print(f"strata: {child.name} restarted (pid {child.process.pid})", file=sys.stderr, flush=True)


def stop_services(children: Children) -> list[str]:
    """Stops every running child by SIGTERM (killing any that outlive the grace period).

    Returns the names of those that did not exit 0 once asked to stop: each service handles
    SIGTERM with a clean shutdown, so anything else is worth reporting.
    """
    signalled = [(name, child) for name, child in reversed(children) if child.poll() is None]
    for _, child in signalled:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    unclean: list[str] = []
    for name, child in signalled:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"strata: {name} did not stop in time; killing it", file=sys.stderr)
            child.kill()
            child.wait()
        if child.returncode != 0:
            unclean.append(name)
            print(f"strata: {name} stopped with status {child.returncode}", file=sys.stderr)
    return unclean
