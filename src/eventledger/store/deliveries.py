"""The delivery repository: durable state of webhook deliveries (SPEC §4).

One row per (destination, event) in the ``deliveries`` table. Its life::

    PENDING -> IN_FLIGHT -> COMPLETED
               IN_FLIGHT -> RETRY_WAIT -> IN_FLIGHT
               IN_FLIGHT -> DEAD_LETTER -> (operator) PENDING | SKIPPED

The only way to a request is :meth:`DeliveryRepository.claim`: one atomic store operation
that moves due rows to ``IN_FLIGHT`` under a lease (owner + expiry) that only one caller can
win. A row is due when it is ``PENDING``/``RETRY_WAIT`` and its ``next_attempt_at`` has passed,
or ``IN_FLIGHT`` with an expired lease (its process died: at-least-once). It is also causally
ready: sequence 1 of its entity, or the row with ``sequence - 1`` of the same ``entity_key`` is
``COMPLETED`` or ``SKIPPED``. Outcomes are written with :meth:`DeliveryRepository.record`,
conditional on still owning the lease.

Identifiers: a standalone :class:`eventledger.dispatch.DispatchEvent` has
``delivery_id = webhook_id = event_id`` and ``entity_key = entity_id``; a pipeline delivery has
``delivery_id = endpoint_id/event_id``, ``webhook_id = event_id`` and
``entity_key = endpoint_id/user_id``.

Get a repository with :meth:`eventledger.store.Store.deliveries`; every method is a coroutine
and no database call runs on the event loop thread. Close it with ``await repo.close()``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConflictError, NotFoundError
from ..timeutil import format_us

__all__ = [
    "ClaimedDelivery",
    "DeliveryInfo",
    "DeliveryRepository",
    "DeliveryResult",
    "DeliveryState",
    "NewDelivery",
]


class DeliveryState(enum.StrEnum):
    """The states of a delivery (stored as these exact words)."""

    PENDING = "PENDING"
    IN_FLIGHT = "IN_FLIGHT"
    RETRY_WAIT = "RETRY_WAIT"
    COMPLETED = "COMPLETED"
    DEAD_LETTER = "DEAD_LETTER"
    SKIPPED = "SKIPPED"


#: States after which the next sequence of the entity may be attempted.
RESOLVED_STATES = (DeliveryState.COMPLETED, DeliveryState.SKIPPED)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewDelivery:
    """A delivery to create (state PENDING)."""

    delivery_id: str
    webhook_id: str
    entity_key: str
    sequence: int
    target_url: str
    payload: bytes
    endpoint_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedDelivery:
    """A delivery this caller now holds IN_FLIGHT until ``lease_expires_at_us``.

    ``attempts`` already counts the attempt about to be made. ``secret`` is the endpoint's
    ``whsec_`` signing secret (pipeline deliveries), or None.
    """

    delivery_id: str
    webhook_id: str
    entity_key: str
    sequence: int
    target_url: str
    payload: bytes
    endpoint_id: str | None
    secret: str | None
    attempts: int
    lease_expires_at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryResult:
    """The outcome of one attempt, to record.

    ``state`` is COMPLETED, RETRY_WAIT (then ``next_attempt_at_us`` is when to try again) or
    DEAD_LETTER.
    """

    delivery_id: str
    state: DeliveryState
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at_us: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryInfo:
    """What is known about one delivery.

    ``blocked_by`` is set for a PENDING/RETRY_WAIT row whose predecessor (``sequence - 1``
    of the same entity) is not yet COMPLETED or SKIPPED: ``{"sequence": n, "state": s}``
    where ``s`` is the predecessor's state, or ``"MISSING"`` when it was never submitted.
    """

    delivery_id: str
    webhook_id: str
    entity_key: str
    sequence: int
    endpoint_id: str | None
    target_url: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    last_status: int | None
    next_attempt_at_us: int
    lease_owner: str | None
    lease_expires_at_us: int | None
    created_at_us: int
    updated_at_us: int
    completed_at_us: int | None
    blocked_by: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (times in RFC 3339)."""
        return {
            "delivery_id": self.delivery_id,
            "webhook_id": self.webhook_id,
            "entity_key": self.entity_key,
            "sequence": self.sequence,
            "endpoint_id": self.endpoint_id,
            "target_url": self.target_url,
            "state": self.state.value,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "next_attempt_at": format_us(self.next_attempt_at_us)
            if self.next_attempt_at_us
            else None,
            "lease_owner": self.lease_owner,
            "lease_expires_at": format_us(self.lease_expires_at_us)
            if self.lease_expires_at_us
            else None,
            "created_at": format_us(self.created_at_us),
            "updated_at": format_us(self.updated_at_us),
            "completed_at": format_us(self.completed_at_us) if self.completed_at_us else None,
            "blocked_by": self.blocked_by,
        }


# Columns of DeliveryInfo in table order; both backends select exactly these.
INFO_COLUMNS = (
    "delivery_id, webhook_id, entity_key, sequence, endpoint_id, target_url, state, attempts,"
    " last_error, last_status, next_attempt_at, lease_owner, lease_expires_at, created_at,"
    " updated_at, completed_at"
)


def info_from_row(row: Sequence[Any], prev_state: str | None = None) -> DeliveryInfo:
    """A DeliveryInfo from a row of :data:`INFO_COLUMNS` and the predecessor's state.

    ``prev_state`` is the state of ``sequence - 1`` (None when that row does not exist).
    """
    state = DeliveryState(row[6])
    sequence = int(row[3])
    blocked_by = None
    waiting = state in (DeliveryState.PENDING, DeliveryState.RETRY_WAIT)
    if waiting and sequence > 1 and prev_state not in RESOLVED_STATES:
        blocked_by = {"sequence": sequence - 1, "state": prev_state or "MISSING"}
    return DeliveryInfo(
        delivery_id=row[0],
        webhook_id=row[1],
        entity_key=row[2],
        sequence=sequence,
        endpoint_id=row[4],
        target_url=row[5],
        state=state,
        attempts=int(row[7]),
        last_error=row[8],
        last_status=row[9],
        next_attempt_at_us=int(row[10]) if int(row[10]) < PARKED else 0,
        lease_owner=row[11],
        lease_expires_at_us=row[12],
        created_at_us=int(row[13]),
        updated_at_us=int(row[14]),
        completed_at_us=row[15],
        blocked_by=blocked_by,
    )


def operator_error(delivery_id: str, state: str | None, action: str) -> Exception:
    """The error for retry/skip of a row that is missing or not in DEAD_LETTER."""
    if state is None:
        return NotFoundError(f"unknown delivery {delivery_id!r}")
    return ConflictError(
        f"cannot {action} delivery {delivery_id!r}: it is {state}, not DEAD_LETTER"
    )


class DeliveryRepository(abc.ABC):
    """Durable delivery state, shared by the dispatcher, the CLI and the HTTP API."""

    backend: str

    # -- dispatcher side -----------------------------------------------------------------
    @abc.abstractmethod
    async def insert(self, rows: Sequence[NewDelivery]) -> list[bool]:
        """Create PENDING deliveries in one transaction; for each row, True when it was
        created, False when its ``delivery_id`` already existed (the stored row, whatever its
        state, is left untouched: a COMPLETED delivery is never reset).

        Raises ConflictError, inserting nothing, when a row's (entity_key, sequence) belongs to
        another delivery."""

    @abc.abstractmethod
    async def claim(
        self, owner: str, limit: int, lease_us: int, now_us: int | None = None
    ) -> list[ClaimedDelivery]:
        """Atomically move up to ``limit`` due, causally ready rows to IN_FLIGHT, leased by
        ``owner`` until ``now + lease_us``, counting one more attempt. Only one caller (in any
        process) can win a row."""

    @abc.abstractmethod
    async def record(self, owner: str, results: Sequence[DeliveryResult]) -> int:
        """Write attempt outcomes in one transaction, each only if ``owner`` still holds the
        row IN_FLIGHT; return how many were written (the others lost their lease)."""

    @abc.abstractmethod
    async def release(self, owner: str, delivery_ids: Sequence[str], retry_at_us: int) -> int:
        """Give back rows claimed but never sent (shutdown, saturated host): they return to
        PENDING due at ``retry_at_us`` and the attempt counted by the claim is undone."""

    @abc.abstractmethod
    async def work_remaining(self) -> bool:
        """Whether any row is IN_FLIGHT or RETRY_WAIT, or PENDING and causally ready (rows
        blocked behind a DEAD_LETTER or a missing sequence do not count)."""

    @abc.abstractmethod
    async def count_blocked(self) -> int:
        """PENDING/RETRY_WAIT rows whose predecessor is DEAD_LETTER or was never submitted:
        they cannot move without an operator or the missing event."""

    # -- operator / API side -------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, delivery_id: str) -> DeliveryInfo | None:
        """One delivery (with ``blocked_by`` when it waits for its predecessor), or None."""

    @abc.abstractmethod
    async def list_deliveries(
        self, state: DeliveryState | str | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeliveryInfo]:
        """Deliveries, optionally of one state, oldest first (by creation, then id)."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Number of deliveries in each state (every state present, zeros included)."""

    @abc.abstractmethod
    async def retry_dead_letter(self, delivery_id: str) -> DeliveryInfo:
        """DEAD_LETTER -> PENDING with attempts reset to 0 and due now.

        Raises NotFoundError for an unknown id, ConflictError when it is not DEAD_LETTER."""

    @abc.abstractmethod
    async def skip_dead_letter(self, delivery_id: str) -> DeliveryInfo:
        """DEAD_LETTER -> SKIPPED: the entity's next sequence may go.

        Raises NotFoundError for an unknown id, ConflictError when it is not DEAD_LETTER."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close connections and the worker thread. Idempotent."""

    async def __aenter__(self) -> DeliveryRepository:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def check_state(state: DeliveryState | str | None) -> str | None:
    """The stored word of a state filter; InputError naming the valid states otherwise."""
    if state is None:
        return None
    try:
        return DeliveryState(str(state).upper()).value
    except ValueError:
        from ..errors import InputError

        names = ", ".join(s.value for s in DeliveryState)
        raise InputError(f"unknown delivery state {state!r}: use one of {names}") from None


# -- SQL shared by both backends ---------------------------------------------------------------
# Written with :name parameters (SQLite's style); the PostgreSQL repository rewrites them to
# %(name)s. No "::" casts here, so the rewrite is unambiguous.

# Causal readiness: the first sequence, or the predecessor is resolved. A point lookup on the
# UNIQUE (entity_key, sequence) index; no head table to keep in step with the rows.
READY = (
    "(d.sequence = 1 OR EXISTS (SELECT 1 FROM deliveries p WHERE p.entity_key = d.entity_key"
    " AND p.sequence = d.sequence - 1 AND p.state IN ('COMPLETED', 'SKIPPED')))"
)

# Ids of due, ready rows: expired leases first (their process died), then due PENDING and
# RETRY_WAIT rows in next_attempt_at order (the deliveries_state index).
DUE_IDS = (
    "SELECT d.delivery_id FROM deliveries d WHERE d.state = 'IN_FLIGHT'"
    " AND d.lease_expires_at < :now"
    " UNION ALL"
    " SELECT d.delivery_id FROM deliveries d WHERE d.state IN ('PENDING', 'RETRY_WAIT')"
    f" AND d.next_attempt_at <= :now AND {READY}"
)

# Parking (SQLite): a PENDING row found not ready gets next_attempt_at = PARKED, so the due
# scan of later claims no longer walks past it; completing or skipping its predecessor
# unparks it. Without it every claim re-checked every blocked row: 5.8 ms per claim of ~70
# rows during the 20,000-event benchmark, against 0.7 ms for 200 rows when only ready rows
# are scanned (benchmarks/dispatch_bench.py). Safe on SQLite because parking runs under the
# write lock and sees the predecessor's latest state.
PARKED = 1 << 62

PARK = (
    "UPDATE deliveries SET next_attempt_at = :parked WHERE delivery_id IN ("
    "SELECT d.delivery_id FROM deliveries d WHERE d.state = 'PENDING'"
    f" AND d.next_attempt_at <= :now AND d.sequence > 1 AND NOT {READY})"
)

UNPARK_NEXT = (
    "UPDATE deliveries SET next_attempt_at = 0 WHERE next_attempt_at = :parked"
    " AND (entity_key, sequence) = (SELECT entity_key, sequence + 1 FROM deliveries"
    " WHERE delivery_id = :delivery_id)"
)

CLAIM_SET = (
    "state = 'IN_FLIGHT', attempts = attempts + 1, lease_owner = :owner,"
    " lease_expires_at = :lease_until, updated_at = :now"
)

CLAIM_RETURNING = (
    "delivery_id, webhook_id, entity_key, sequence, target_url, payload, endpoint_id, attempts"
)

INSERT = (
    "INSERT INTO deliveries (delivery_id, webhook_id, entity_key, sequence, endpoint_id,"
    " target_url, payload, state, created_at, updated_at)"
    " VALUES (:delivery_id, :webhook_id, :entity_key, :sequence, :endpoint_id, :target_url,"
    " :payload, 'PENDING', :now, :now)"
    " ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id"
)

RECORD = (
    "UPDATE deliveries SET state = :state, last_status = :last_status,"
    " last_error = COALESCE(:last_error, last_error), next_attempt_at = :next_attempt_at,"
    " lease_owner = NULL,"
    " lease_expires_at = NULL, updated_at = :now, completed_at = :completed_at"
    " WHERE delivery_id = :delivery_id AND state = 'IN_FLIGHT' AND lease_owner = :owner"
)

RELEASE = (
    "UPDATE deliveries SET"
    " state = CASE WHEN attempts > 1 THEN 'RETRY_WAIT' ELSE 'PENDING' END,"
    " attempts = attempts - 1, next_attempt_at = :retry_at, lease_owner = NULL,"
    " lease_expires_at = NULL, updated_at = :now"
    " WHERE delivery_id = :delivery_id AND state = 'IN_FLIGHT' AND lease_owner = :owner"
)

WORK_REMAINING = (
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE state IN ('IN_FLIGHT', 'RETRY_WAIT'))"
    f" OR EXISTS (SELECT 1 FROM deliveries d WHERE d.state = 'PENDING' AND {READY})"
)

COUNT_BLOCKED = (
    "SELECT count(*) FROM deliveries d WHERE d.state IN ('PENDING', 'RETRY_WAIT')"
    " AND d.sequence > 1 AND NOT EXISTS (SELECT 1 FROM deliveries p"
    " WHERE p.entity_key = d.entity_key AND p.sequence = d.sequence - 1"
    " AND p.state <> 'DEAD_LETTER')"
)

_PREV_STATE = (
    "(SELECT p.state FROM deliveries p WHERE p.entity_key = d.entity_key"
    " AND p.sequence = d.sequence - 1)"
)
_INFO_SELECT = (
    "SELECT "
    + ", ".join("d." + c.strip() for c in INFO_COLUMNS.split(","))
    + f", {_PREV_STATE} FROM deliveries d"
)
GET = _INFO_SELECT + " WHERE d.delivery_id = :delivery_id"
LIST_ALL = _INFO_SELECT + " ORDER BY d.created_at, d.delivery_id LIMIT :limit OFFSET :offset"
LIST_STATE = (
    _INFO_SELECT
    + " WHERE d.state = :state ORDER BY d.created_at, d.delivery_id LIMIT :limit OFFSET :offset"
)
COUNTS = "SELECT state, count(*) FROM deliveries GROUP BY state"
STATE_OF = "SELECT state FROM deliveries WHERE delivery_id = :delivery_id"

RETRY_DEAD_LETTER = (
    "UPDATE deliveries SET state = 'PENDING', attempts = 0, next_attempt_at = 0,"
    " updated_at = :now WHERE delivery_id = :delivery_id AND state = 'DEAD_LETTER'"
)
SKIP_DEAD_LETTER = (
    "UPDATE deliveries SET state = 'SKIPPED', updated_at = :now, completed_at = :now"
    " WHERE delivery_id = :delivery_id AND state = 'DEAD_LETTER'"
)


def claimed_from_row(
    row: Sequence[Any], secrets: dict[str, str | None], lease_until: int
) -> ClaimedDelivery:
    """A ClaimedDelivery from a row of :data:`CLAIM_RETURNING`."""
    endpoint_id = row[6]
    return ClaimedDelivery(
        delivery_id=row[0],
        webhook_id=row[1],
        entity_key=row[2],
        sequence=int(row[3]),
        target_url=row[4],
        payload=bytes(row[5]),
        endpoint_id=endpoint_id,
        secret=secrets.get(endpoint_id) if endpoint_id is not None else None,
        attempts=int(row[7]),
        lease_expires_at_us=lease_until,
    )


def record_params(owner: str, result: DeliveryResult, now: int) -> dict[str, Any]:
    """Parameters of :data:`RECORD` for one result."""
    return {
        "state": result.state.value,
        "last_status": result.last_status,
        "last_error": result.last_error,
        "next_attempt_at": result.next_attempt_at_us,
        "now": now,
        "completed_at": now if result.state is DeliveryState.COMPLETED else None,
        "delivery_id": result.delivery_id,
        "owner": owner,
    }


def insert_params(row: NewDelivery, now: int) -> dict[str, Any]:
    """Parameters of :data:`INSERT` for one row."""
    return {
        "delivery_id": row.delivery_id,
        "webhook_id": row.webhook_id,
        "entity_key": row.entity_key,
        "sequence": row.sequence,
        "endpoint_id": row.endpoint_id,
        "target_url": row.target_url,
        "payload": row.payload,
        "now": now,
    }


def all_counts(rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Counts by state with every state present."""
    found = {str(r[0]): int(r[1]) for r in rows}
    return {s.value: found.get(s.value, 0) for s in DeliveryState}
