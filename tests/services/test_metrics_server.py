"""`/metrics` over HTTP for a gRPC service: its own registry, its port rules, a clean stop."""

import socket
import urllib.request

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from services.platform.metrics_server import (
    DEFAULT_METRICS_PORT,
    MetricsServer,
    metrics_port_for,
    new_registry,
    serve_metrics_beside,
)

pytestmark = pytest.mark.unit


def test_default_port_is_the_grpc_port_plus_1000_unless_out_of_range() -> None:
    assert metrics_port_for(DEFAULT_METRICS_PORT, 52416) == 53416
    assert metrics_port_for(DEFAULT_METRICS_PORT, 65000) == 0
    assert metrics_port_for(DEFAULT_METRICS_PORT, 0) == 0
    assert metrics_port_for(0, 52416) == 0
    assert metrics_port_for(9100, 52416) == 9100


def test_serves_its_registry_and_stops() -> None:
    registry = new_registry()
    Counter("strata_test_things", "Things.", registry=registry).inc(3)
    server = MetricsServer(registry)
    address = server.start("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            text = response.read().decode()
        [family] = [family for family in text_string_to_metric_families(text) if family.name == "strata_test_things"]
        assert family.samples[0].value == 3
    finally:
        server.stop()
    with socket.socket() as probe:  # nothing listens there any more (the closed connection may linger)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))


def test_a_taken_port_fails_or_falls_back() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(OSError, match="cannot serve metrics"):
            MetricsServer(new_registry()).start("127.0.0.1", port)
        fallback = MetricsServer(new_registry())
        try:
            assert fallback.start("127.0.0.1", port, fallback_to_free_port=True) != f"127.0.0.1:{port}"
        finally:
            fallback.stop()


def test_an_explicit_port_that_is_taken_stops_the_service_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(SystemExit, match="--metrics-port"):
            serve_metrics_beside(new_registry(), "127.0.0.1", port, 52416)
