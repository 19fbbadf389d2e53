"""How long a committed event takes to reach a dashboard: from a command's commit to its `committed`
event on the gateway's `/v1/cluster/events` stream (reported by `make bench`, never asserted).

Each round commits one harmless command, `ServeModel` of a served model with the instances it has
(a `ModelServed` event that changes nothing), and times the event's arrival on an open stream against
the moment the coordinator's reply said it was committed and applied. The gateway reaches the event
through its own `WatchEvents` and fetches the status document once per burst before it sends it, so
the figure includes both.
"""

import json
import queue
import statistics
import threading
import time
from dataclasses import dataclass

import httpx

from services.kernel.ids import ModelId
from services.platform.grpc_server import cluster_sync_channel
from strata_wire import coordinator_pb2, coordinator_pb2_grpc

ROUNDS = 20
ARRIVAL_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class EventLatency:
    """Seconds from the commit's reply to the event's arrival (negative: the event came first)."""

    rounds: int
    median_seconds: float
    max_seconds: float
    median_from_request_seconds: float
    """From sending the command: commit and delivery together."""


def _read_events(
    url: str, arrivals: queue.Queue[tuple[int, str, float]], opened: threading.Event, stop: threading.Event
) -> None:
    with httpx.stream("GET", url, timeout=httpx.Timeout(30.0, read=5.0)) as response:
        event_name = ""
        for line in response.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event: "):
                event_name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                if event_name == "state":
                    opened.set()
                elif event_name == "committed":
                    data = json.loads(line.removeprefix("data: "))
                    arrivals.put((int(data["index"]), str(data["kind"]), time.monotonic()))


def measure_event_latency(
    gateway_url: str, coordinator_address: str, model_id: ModelId, instances: int, rounds: int = ROUNDS
) -> EventLatency:
    arrivals: queue.Queue[tuple[int, str, float]] = queue.Queue()
    opened, stop = threading.Event(), threading.Event()
    reader = threading.Thread(
        target=_read_events, args=(f"{gateway_url}/v1/cluster/events", arrivals, opened, stop), daemon=True
    )
    reader.start()
    from_reply: list[float] = []
    from_request: list[float] = []
    try:
        if not opened.wait(ARRIVAL_TIMEOUT_SECONDS):
            raise RuntimeError("the gateway's event stream did not open")
        with cluster_sync_channel(coordinator_address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            for _ in range(rounds):
                sent = time.monotonic()
                stub.ServeModel(coordinator_pb2.ServeModelRequest(model_id=model_id, instances=instances), timeout=30)
                replied = time.monotonic()
                deadline = replied + ARRIVAL_TIMEOUT_SECONDS
                while True:  # the event this command committed: the next model_served from now on
                    _, kind, arrived = arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
                    if kind == "model_served" and arrived >= sent:
                        break
                from_reply.append(arrived - replied)
                from_request.append(arrived - sent)
    finally:
        stop.set()
        reader.join(10)
    return EventLatency(
        rounds=rounds,
        median_seconds=statistics.median(from_reply),
        max_seconds=max(from_reply),
        median_from_request_seconds=statistics.median(from_request),
    )


def event_latency_lines(latency: EventLatency | None) -> list[str]:
    """The report's section on it."""
    if latency is None:
        return []
    return [
        "## Cluster events to the dashboard",
        "",
        f"From a committed command (the coordinator's reply) to its `committed` event on the gateway's "
        f"`/v1/cluster/events`, {latency.rounds} rounds: median {latency.median_seconds * 1000:.1f} ms, "
        f"max {latency.max_seconds * 1000:.1f} ms; from sending the command (commit included): median "
        f"{latency.median_from_request_seconds * 1000:.1f} ms. Reported, not asserted: it moves with the load.",
        "",
    ]
