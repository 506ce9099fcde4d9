"""Prometheus metrics of one app instance (its own registry: nothing global)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..model import Report

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _CallbackCollector(Collector):
    """Values read at scrape time (delivery states from the store, dispatcher counters)."""

    def __init__(
        self,
        name: str,
        doc: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        *,
        kind: str,
    ) -> None:
        self.name, self.doc, self.label, self.read, self.kind = name, doc, label, read, kind

    def collect(self) -> Iterable[Any]:
        family: GaugeMetricFamily | CounterMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        else:
            family = GaugeMetricFamily(self.name, self.doc, labels=[self.label])
        for key, value in sorted(self.read().items()):
            family.add_metric([key], value)
        yield family


class ApiMetrics:
    """The counters and histograms the service exposes on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ingest_events = Counter(
            "eventledger_ingest_events",
            "Events received over HTTP, by outcome and rejection reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.ingest_batches = Counter(
            "eventledger_ingest_batches",
            "Batches posted, by result (accepted, or the error code of a refused body)",
            ["result"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "eventledger_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def count_report(self, report: Report) -> None:
        self.ingest_batches.labels("accepted").inc()
        if report.applied:
            self.ingest_events.labels("applied", "").inc(report.applied)
        if report.duplicates:
            self.ingest_events.labels("duplicate", "").inc(report.duplicates)
        for reason, n in report.rejected_by_reason.items():
            self.ingest_events.labels("rejected", reason).inc(n)

    def count_refused(self, code: str) -> None:
        self.ingest_batches.labels(code).inc()

    def add_gauges(
        self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Expose values read at scrape time, e.g. deliveries by state."""
        self.registry.register(_CallbackCollector(name, doc, label, read, kind="gauge"))

    def add_counters(
        self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Expose monotonic counts read at scrape time, e.g. the dispatcher's."""
        self.registry.register(_CallbackCollector(name, doc, label, read, kind="counter"))

    def render(self) -> bytes:
        """The text exposition format (may read the store: call it off the event loop)."""
        return generate_latest(self.registry)


class LatencyMiddleware:
    """Times every HTTP request and labels it with its route template (bounded cardinality)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
