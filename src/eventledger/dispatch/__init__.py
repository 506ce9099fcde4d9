"""The webhook dispatcher (SPEC §4): idempotent, causally ordered, with a dead letter.

Public names (a contract): :class:`DispatchEvent`, :class:`RetryPolicy`,
:class:`DispatchConfig`, :class:`EventOrchestrator`, plus :class:`DispatchMetrics` and the
delivery states :class:`DeliveryState`.
"""

from __future__ import annotations

from ..store.deliveries import DeliveryInfo, DeliveryState
from .model import DispatchConfig, DispatchEvent, DispatchMetrics
from .orchestrator import EventOrchestrator
from .retry import RetryPolicy, parse_retry_after
from .transport import sign

__all__ = [
    "DeliveryInfo",
    "DeliveryState",
    "DispatchConfig",
    "DispatchEvent",
    "DispatchMetrics",
    "EventOrchestrator",
    "RetryPolicy",
    "parse_retry_after",
    "sign",
]
