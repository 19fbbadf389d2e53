"""The gateway's Prometheus metrics, served as `GET /metrics` on its own HTTP port (no API key needed).

`GatewayMetrics` holds this process's registry: HTTP requests by route and status (`HttpMetrics`, an
ASGI wrapper that also answers `/metrics`), prompt and completion tokens (a finished completion adds
exactly its usage), TTFT, TPOT and ITL histograms and the generations in flight (the completion
engine reports them through a `GenerationTimer`), and recovery's counters, read at scrape time.
"""

import asyncio
import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.recovery import RecoveryCounts
from services.platform.metrics_server import new_registry

METRICS_PATH = "/metrics"
LATENCY_BUCKETS_SECONDS = (
    0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
    1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip
"""10 ms to 60 s: decode steps of a small model on one core to a long prompt's prefill over a slow ring."""
KNOWN_PATHS = frozenset({"/health", METRICS_PATH, "/v1/chat/completions", "/v1/completions", "/v1/models"})
"""Paths labelled as they are when no route matched them (e.g. refused for a missing API key)."""


class _RecoveryCollector(Collector):
    def __init__(self, counts: Callable[[], RecoveryCounts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        yield CounterMetricFamily(
            "strata_gateway_replays",
            "Runs of a request started again on the pipeline after a broken one.",
            value=counts.replays,
        )
        yield CounterMetricFamily(
            "strata_gateway_replayed_tokens",
            "Already streamed tokens those replays fed again (not sent twice).",
            value=counts.replayed_tokens,
        )
        yield CounterMetricFamily(
            "strata_gateway_recoveries_failed",
            "Requests whose pipeline broke and could not be recovered.",
            value=counts.recoveries_failed,
        )


class GatewayMetrics:
    def __init__(self, recovery_counts: Callable[[], RecoveryCounts] = RecoveryCounts) -> None:
        self.registry = new_registry()
        self.requests = Counter(
            "strata_gateway_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "strata_gateway_prompt_tokens",
            "Prompt tokens of finished completions (their usage).",
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "strata_gateway_completion_tokens",
            "Generated tokens of finished completions (their usage).",
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "strata_gateway_time_to_first_token_seconds",
            "From a completion's start (before tokenizing) to its first generated token.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "strata_gateway_time_per_output_token_seconds",
            "Per finished completion of 2+ tokens: (last token - first token) / (tokens - 1).",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "strata_gateway_inter_token_latency_seconds",
            "Time between two consecutive generated tokens of a completion.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "strata_gateway_requests_in_flight", "Completions being generated now.", registry=self.registry
        )
        self.registry.register(_RecoveryCollector(recovery_counts))

    def generation(self, clock: Callable[[], float] = time.perf_counter) -> "GenerationTimer":
        """Times one completion from now on."""
        return GenerationTimer(self, clock)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class GenerationTimer:
    """One completion's timings, reported as they happen (on the event loop: each is a few µs)."""

    def __init__(self, metrics: GatewayMetrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock
        self._started = clock()
        self._first_token: float | None = None
        self._last_token = 0.0
        self._tokens = 0

    def token(self) -> None:
        now = self._clock()
        if self._first_token is None:
            self._first_token = now
            self._metrics.time_to_first_token.observe(now - self._started)
        else:
            self._metrics.inter_token_latency.observe(now - self._last_token)
        self._last_token = now
        self._tokens += 1

    def finished(self, prompt_tokens: int, completion_tokens: int) -> None:
        """The completion's usage, counted once it is known."""
        self._metrics.prompt_tokens.inc(prompt_tokens)
        self._metrics.completion_tokens.inc(completion_tokens)
        if self._first_token is not None and self._tokens > 1:
            per_token = (self._last_token - self._first_token) / (self._tokens - 1)
            self._metrics.time_per_output_token.observe(per_token)


class HttpMetrics:
    """ASGI wrapper (outermost): answers `GET /metrics`, counts every other request by route and status."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if path == METRICS_PATH:
            await self._serve_metrics(scope, send)
            return
        status = 500  # the app failed before it answered

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_noting_status)
        finally:
            self._metrics.requests.labels(_route_label(scope, path), str(status)).inc()

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        method = str(scope.get("method", "GET"))
        if method not in ("GET", "HEAD"):
            await _answer(send, 405, b"", b"text/plain")
        else:
            body = await asyncio.to_thread(self._metrics.exposition)
            await _answer(send, 200, body if method == "GET" else b"", CONTENT_TYPE_LATEST.encode())
        self._metrics.requests.labels(METRICS_PATH, "200" if method in ("GET", "HEAD") else "405").inc()


def _route_label(scope: Scope, path: str) -> str:
    """The matched route's template (`/v1/models/{model_id:path}`), so ids never become labels."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    return path if path in KNOWN_PATHS else "other"


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
