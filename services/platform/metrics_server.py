"""Prometheus `/metrics` for a gRPC service, on an HTTP port of its own, with one registry per process.

Each role defines its metrics in its own package (gateway/metrics.py, shard_server/metrics.py,
coordinator/metrics.py) in a registry from `new_registry`, never in prometheus_client's global one
(tests run several services in one process). A gRPC service serves that registry with
`MetricsServer`: prometheus_client's own threaded HTTP server, bound to the host the gRPC server binds.
Collectors run on that server's threads at scrape time, never on the event loop.

`--metrics-port`: 0 picks a free port; the default (`DEFAULT_METRICS_PORT`) is the gRPC port +
`METRICS_PORT_OFFSET`, or a free port (logged) when that one is taken or out of range. An explicit
port that is taken is an error.
"""

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)

METRICS_PORT_OFFSET = 1000
"""Default metrics port: the service's gRPC port + this (coordinator 53416, shards 53417, ...)."""
DEFAULT_METRICS_PORT = -1
"""`--metrics-port` not given: the gRPC port + `METRICS_PORT_OFFSET`, or a free one if that is taken."""
HIGHEST_PORT = 65535


def new_registry() -> CollectorRegistry:
    """The registry a process's metrics live in (not prometheus_client's global one)."""
    return CollectorRegistry()


def metrics_port_for(requested: int, grpc_port: int) -> int:
    """The port to bind for `--metrics-port requested` beside a gRPC server on `grpc_port` (0: free)."""
    if requested != DEFAULT_METRICS_PORT:
        return requested
    offset = grpc_port + METRICS_PORT_OFFSET
    return offset if grpc_port > 0 and offset <= HIGHEST_PORT else 0


def serve_metrics_beside(
    registry: CollectorRegistry, host: str, requested_port: int, grpc_port: int
) -> "MetricsServer":
    """Serves `registry` for the gRPC service on host:grpc_port, as `--metrics-port requested_port` says;
    exits with a message when an explicitly requested port is taken."""
    server = MetricsServer(registry)
    try:
        server.start(
            host,
            metrics_port_for(requested_port, grpc_port),
            fallback_to_free_port=requested_port == DEFAULT_METRICS_PORT,
        )
    except OSError as error:
        raise SystemExit(f"strata: {error} (see --metrics-port)") from error
    return server


class MetricsServer:
    """`GET /metrics` of `registry` on host:port, on a daemon thread; `address` once started."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def start(self, host: str, port: int, *, fallback_to_free_port: bool = False) -> str:
        """Binds and serves; returns host:port. A taken port raises OSError unless `fallback_to_free_port`."""
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self._registry)
        except OSError as error:
            if not fallback_to_free_port or port == 0:
                raise OSError(f"cannot serve metrics on {host}:{port}: {error}") from error
            logger.warning("metrics port %d on %s is taken (%s); using a free port", port, host, error)
            self._server, self._thread = start_http_server(0, addr=host, registry=self._registry)
        self.address = f"{host}:{self._server.server_port}"
        logger.info("metrics on http://%s/metrics", self.address)
        return self.address

    def stop(self) -> None:
        """Blocks up to half a second (the server's poll interval): call it from a worker thread."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
