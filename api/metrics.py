"""Prometheus metrics: request counts and latency histograms per route and status.

Requests are labelled with the route's path template (`/products/{product_id}`), never the raw
path, so the number of time series stays bounded whatever URLs clients send: paths that match
no route share the label `unmatched`, unusual methods the label `OTHER`. Each app has its own
registry, so several apps in one process (tests, workers) do not clash.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """The collectors of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter("shopgraph_http_requests", "HTTP requests handled",
                                labels, registry=self.registry)
        self.latency = Histogram("shopgraph_http_request_duration_seconds",
                                 "Time from request start to the end of the response",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("shopgraph_http_requests_in_flight",
                               "Requests being handled now", registry=self.registry)
        self.reloads = Counter("shopgraph_search_reloads", "Search artifact reloads",
                               ("outcome",), registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (no response buffering) that times and counts HTTP requests."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response starts ends as a 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            labels = (method, getattr(route, "path", "unmatched"), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
