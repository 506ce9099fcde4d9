"""The bridge between the service and the dispatcher (:mod:`eventledger.dispatch`)."""

from __future__ import annotations

from typing import Any

from ..dispatch import DispatchConfig, EventOrchestrator, RetryPolicy
from ..errors import ConfigError
from .app import Services

# Gauges among the dispatcher's metrics; the rest only ever grow (Prometheus counters).
_DISPATCH_GAUGES = ("in_flight", "blocked")


def build_dispatch_config(
    *,
    workers: int | None = None,
    request_timeout: float | None = None,
    max_attempts: int | None = None,
    retry_initial: float | None = None,
    retry_maximum: float | None = None,
    allow_private_targets: bool = False,
) -> DispatchConfig:
    """A ``DispatchConfig`` from command-line options; None keeps the dispatcher's default."""
    retry: dict[str, Any] = {}
    if max_attempts is not None:
        retry["max_attempts"] = max_attempts
    if retry_initial is not None:
        retry["initial"] = retry_initial
    if retry_maximum is not None:
        retry["maximum"] = retry_maximum
    try:
        policy = RetryPolicy(**retry)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid retry options: {exc}") from exc
    options: dict[str, Any] = {"retry": policy, "allow_private_targets": allow_private_targets}
    if workers is not None:
        options["workers"] = workers
    if request_timeout is not None:
        options["request_timeout"] = request_timeout
        # The lease must outlast a request, whatever the timeout chosen.
        options["lease_duration"] = max(DispatchConfig().lease_duration, request_timeout * 3)
    return DispatchConfig(**options)


async def start_dispatcher(svc: Services) -> None:
    """Start the orchestrator on the service's store and export its counters."""
    config = svc.config.dispatch if svc.config.dispatch is not None else DispatchConfig()
    orchestrator = EventOrchestrator(svc.ledger.store, config)
    await orchestrator.start()
    svc.dispatcher = orchestrator

    def counters() -> dict[str, float]:
        values = orchestrator.metrics.as_dict()
        return {k: float(v) for k, v in values.items() if k not in _DISPATCH_GAUGES}

    def gauges() -> dict[str, float]:
        values = orchestrator.metrics.as_dict()
        return {k: float(values[k]) for k in _DISPATCH_GAUGES if k in values}

    svc.metrics.add_counters(
        "eventledger_dispatcher_events",
        "What this process's dispatcher did since it started, by kind",
        "kind",
        counters,
    )
    svc.metrics.add_gauges(
        "eventledger_dispatcher_current",
        "Deliveries this process's dispatcher holds in flight, and deliveries blocked",
        "kind",
        gauges,
    )


async def stop_dispatcher(svc: Services) -> None:
    """Graceful: nothing more is claimed, requests in flight finish and are recorded."""
    if svc.dispatcher is not None:
        orchestrator: EventOrchestrator = svc.dispatcher
        svc.dispatcher = None
        await orchestrator.stop()
