"""The bridge between the service and the dispatcher (:mod:`eventledger.dispatch`)."""

from __future__ import annotations

from ..dispatch import DispatchConfig, EventOrchestrator
from .app import Services

# Gauges among the dispatcher's metrics; the rest only ever grow (Prometheus counters).
_DISPATCH_GAUGES = ("in_flight", "blocked")


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
