"""Value objects of the dispatcher: the event to deliver, the configuration, the metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ..errors import ConfigError, InputError
from .retry import RetryPolicy

__all__ = ["DispatchConfig", "DispatchEvent", "DispatchMetrics"]

MAX_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class DispatchEvent:
    """One event to POST to ``target_url``, in ``sequence`` order within ``entity_id``.

    ``event_id`` is the idempotency key (and the ``webhook-id`` header). Sequences of an
    entity start at 1. A dict ``payload`` is sent as compact JSON.
    """

    event_id: str
    entity_id: str
    sequence: int
    payload: bytes | dict[str, Any]
    target_url: str

    def __post_init__(self) -> None:
        for name in ("event_id", "entity_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH:
                raise InputError(f"{name} must be a non-blank string of <= {MAX_ID_LENGTH} chars")
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int):
            raise InputError("sequence must be an integer")
        if self.sequence < 1:
            raise InputError(
                f"sequence must be >= 1 (the first of an entity is 1), got {self.sequence}"
            )
        if not isinstance(self.payload, bytes | dict):
            raise InputError("payload must be bytes or a dict")
        if not isinstance(self.target_url, str):
            raise InputError("target_url must be a string")

    def body(self) -> bytes:
        """The request body."""
        if isinstance(self.payload, bytes):
            return self.payload
        try:
            return orjson.dumps(self.payload)
        except TypeError as exc:
            raise InputError(
                f"payload of {self.event_id!r} is not JSON-serialisable: {exc}"
            ) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchConfig:
    """How the orchestrator runs. Every field has a named default.

    ``workers`` asyncio tasks send requests; at most ``max_per_host`` requests (and never all
    the workers: ``workers - 1`` when that is smaller and ``workers > 1``) are in flight to
    one host. A claimed delivery is leased for ``lease_duration`` seconds: if the process
    dies, another one reclaims it after that. ``poll_interval`` is how often the store is
    asked for due deliveries when nothing woke the claimer; ``claim_batch_size`` rows are
    claimed per store round trip. ``signing_secret`` (``whsec_...``) signs standalone events
    (pipeline deliveries use their endpoint's secret). ``drain_timeout`` bounds how long
    ``stop()`` waits for requests in flight (default: ``request_timeout`` + 1 s).
    """

    workers: int = 10
    request_timeout: float = 5.0
    max_per_host: int = 50
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_private_targets: bool = False
    lease_duration: float = 30.0
    poll_interval: float = 0.1
    claim_batch_size: int = 100
    signing_secret: str | None = None
    saturated_host_delay: float = 0.5
    blocked_check_interval: float = 2.0
    drain_timeout: float | None = None
    owner: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        if self.max_per_host < 1:
            raise ConfigError("max_per_host must be >= 1")
        if self.request_timeout <= 0:
            raise ConfigError("request_timeout must be > 0")
        if self.lease_duration <= self.request_timeout:
            raise ConfigError("lease_duration must be longer than request_timeout")
        if self.poll_interval <= 0 or self.claim_batch_size < 1:
            raise ConfigError("poll_interval must be > 0 and claim_batch_size >= 1")
        if self.signing_secret is not None and not self.signing_secret.startswith("whsec_"):
            raise ConfigError("signing_secret must start with 'whsec_'")

    @property
    def per_host_limit(self) -> int:
        """Requests allowed in flight to one host at once."""
        if self.workers > 1:
            return min(self.max_per_host, self.workers - 1)
        return 1


@dataclass(slots=True)
class DispatchMetrics:
    """Counters of one orchestrator (``as_dict()`` for Prometheus export).

    ``blocked`` is a gauge: deliveries waiting on a DEAD_LETTER or never-submitted
    predecessor, refreshed every ``blocked_check_interval`` while running.
    """

    submitted: int = 0
    duplicates_suppressed: int = 0
    claimed: int = 0
    sent: int = 0
    succeeded: int = 0
    failed_attempts: int = 0
    retried: int = 0
    dead_lettered: int = 0
    refused_targets: int = 0
    released: int = 0
    lease_lost: int = 0
    store_errors: int = 0
    in_flight: int = 0
    blocked: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
