"""`strata status [--json | --watch [SECONDS]]`: the cluster as a coordinator replica sees it.

The table is `services.app.status_view`; `--json` prints `services.wire.cluster_status.status_document`
(the document `GET /v1/cluster` serves too); `--watch` fetches and re-renders every SECONDS until
Ctrl-C, which ends it with status 0. While the coordinator does not answer, the watch says so above
the last state it showed and keeps asking.
"""

import argparse
import json
import sys
import time
from datetime import datetime

import grpc
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from services.app.operator_commands import fetch_status
from services.app.status_view import PLAIN_WIDTH, status_view
from services.wire.cluster_status import status_document
from strata_wire import coordinator_pb2

DEFAULT_WATCH_SECONDS = 2.0
MIN_WATCH_SECONDS = 0.2
MAX_WATCH_SECONDS = 3600.0


def _watch_interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from error
    if not MIN_WATCH_SECONDS <= seconds <= MAX_WATCH_SECONDS:
        raise argparse.ArgumentTypeError(f"must be between {MIN_WATCH_SECONDS} and {MAX_WATCH_SECONDS:.0f} seconds")
    return seconds


def add_status_arguments(status: argparse.ArgumentParser) -> None:
    output = status.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print the state as one JSON document (the same as GET /v1/cluster)"
    )
    output.add_argument(
        "--watch",
        nargs="?",
        type=_watch_interval,
        const=DEFAULT_WATCH_SECONDS,
        metavar="SECONDS",
        help=f"re-render every SECONDS (default: {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C",
    )


def _error_text(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = PLAIN_WIDTH  # a pipe or a file: no terminal width to fit, and no cell should wrap
    return console


def status_command(arguments: argparse.Namespace) -> int:
    coordinator = str(arguments.coordinator)
    if arguments.watch is not None:
        return watch_status(coordinator, float(arguments.watch))
    try:
        state = fetch_status(coordinator)
    except grpc.RpcError as error:
        print(f"strata status: coordinator {coordinator} unreachable: {_error_text(error)}", file=sys.stderr)
        return 1
    if arguments.json:
        print(json.dumps(status_document(state), indent=2))
    else:
        _console().print(status_view(state))
    return 0


def _watch_frame(
    coordinator: str, state: coordinator_pb2.ClusterState | None, problem: str | None, interval: float
) -> RenderableType:
    clock = datetime.now().strftime("%H:%M:%S")
    if problem is None:
        heading = Text(f"{coordinator} at {clock}, every {interval:g} s; Ctrl-C to stop", style="dim")
    else:
        heading = Text(f"coordinator {coordinator} unreachable at {clock} ({problem}); retrying every {interval:g} s")
        heading.stylize("bold red")
    if state is None:
        return heading
    return Group(heading, status_view(state))


def watch_status(coordinator: str, interval: float) -> int:
    """Re-renders the status every `interval` seconds until Ctrl-C (status 0)."""
    last_state: coordinator_pb2.ClusterState | None = None
    try:
        with Live(
            _watch_frame(coordinator, None, "not asked yet", interval),
            console=_console(),
            auto_refresh=False,
            transient=False,
        ) as live:
            while True:
                problem = None
                try:
                    last_state = fetch_status(coordinator)
                except grpc.RpcError as error:
                    problem = _error_text(error)
                live.update(_watch_frame(coordinator, last_state, problem, interval), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0
