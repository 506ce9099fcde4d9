"""The storage interface shared by the SQLite and PostgreSQL backends.

A backend implements a handful of bulk primitives on a write transaction (:class:`WriteTx`)
and some reads; the algorithm that applies a chunk of events — look up applied ids, let the
pure processor decide, assign per-user sequences, write events, activity, outcomes and
deliveries in one transaction — lives once, here, in :meth:`Store.apply_chunk`.
"""

from __future__ import annotations

import abc
import importlib.resources
import re
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import ConfigError, ConflictError
from ..model import Outcome, OutcomeKind, Report
from ..processor import AppliedEvent, ChunkDecision, Processor, normalize_user_id
from ..timeutil import format_us, now_us

SUMMARY_TYPES = ("click", "view", "purchase")
MAX_CHUNK_ATTEMPTS = 8


# Removing an endpoint resolves its deliveries that were not sent yet (IN_FLIGHT ones finish):
# sent later they would go unsigned to a URL nobody registered any more.
REMOVED_ENDPOINT_SKIP = (
    "UPDATE deliveries SET state = 'SKIPPED', last_error = 'endpoint removed',"
    " updated_at = %s, completed_at = %s"
    " WHERE endpoint_id = %s AND state IN ('PENDING', 'RETRY_WAIT', 'DEAD_LETTER')"
)


class RetryTransaction(Exception):  # noqa: N818 - control flow, never escapes the store
    """Raised inside a write transaction to roll it back and run the chunk again."""


@dataclass(frozen=True, slots=True)
class UserDelta:
    """The change one chunk makes to one user."""

    user_id: str
    last_seen_at: int
    first_seen_at: int | None
    applied: int
    total_value: float


@dataclass(frozen=True, slots=True)
class EventRow:
    event: AppliedEvent
    user_seq: int


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    delivery_id: str
    webhook_id: str
    entity_key: str
    sequence: int
    endpoint_id: str
    target_url: str
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A registered webhook endpoint."""

    endpoint_id: str
    url: str
    secret: str | None
    event_types: tuple[str, ...] | None
    enabled: bool
    created_at_us: int

    def matches(self, event_type: str) -> bool:
        return self.enabled and (self.event_types is None or event_type in self.event_types)

    def to_dict(self, *, show_secret: bool = False) -> dict[str, Any]:
        return {
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "secret": self.secret if show_secret else ("whsec_…" if self.secret else None),
            "event_types": list(self.event_types) if self.event_types is not None else None,
            "enabled": self.enabled,
            "created_at": format_us(self.created_at_us),
        }


@dataclass(slots=True)
class ChunkPlan:
    """What a decided chunk changes, grouped for bulk statements."""

    users: list[UserDelta] = field(default_factory=list)
    counts: list[tuple[str, str, int]] = field(default_factory=list)  # user, type, delta


def plan_chunk(decision: ChunkDecision) -> ChunkPlan:
    """Group a chunk's decisions per user (sorted by user id: a stable lock order)."""
    applied_n: Counter[str] = Counter()
    value: defaultdict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for ev in decision.applied:
        applied_n[ev.user_id] += 1
        counts[(ev.user_id, ev.type)] += 1
        if ev.price is not None:
            value[ev.user_id] += ev.price
        if ev.user_id not in first or ev.timestamp_us < first[ev.user_id]:
            first[ev.user_id] = ev.timestamp_us
    plan = ChunkPlan()
    for user_id in sorted(decision.last_seen):
        plan.users.append(
            UserDelta(
                user_id,
                decision.last_seen[user_id],
                first.get(user_id),
                applied_n[user_id],
                value.get(user_id, 0.0),
            )
        )
    plan.counts = [(u, t, n) for (u, t), n in sorted(counts.items())]
    return plan


def outcome_dict(row: Sequence[Any]) -> dict[str, Any]:
    """The JSON form of a stored outcome row (index, event_id, user_id, outcome, reason,
    detail), as both backends read it for a stored report."""
    return {
        "index": row[0],
        "event_id": row[1],
        "user_id": row[2],
        "outcome": row[3],
        "reason": row[4],
        "detail": row[5],
    }


def event_payload(ev: AppliedEvent, user_seq: int) -> bytes:
    """The JSON body a webhook receives for an applied event."""
    return (
        b'{"event_id":'
        + orjson.dumps(ev.event_id)
        + b',"user_id":'
        + orjson.dumps(ev.user_id)
        + b',"type":'
        + orjson.dumps(ev.type)
        + b',"timestamp":'
        + orjson.dumps(format_us(ev.timestamp_us))
        + b',"sequence":'
        + str(ev.sequence if ev.sequence is not None else user_seq).encode()
        + b',"metadata":'
        + ev.metadata_json
        + b"}"
    )


_SQL_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql\Z")


def load_migrations(backend: str) -> list[tuple[int, str]]:
    """The numbered migrations of a backend, in order, as (version, sql)."""
    folder = importlib.resources.files("eventledger.store") / "sql" / backend
    found = []
    for entry in folder.iterdir():
        match = _SQL_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)


def split_statements(sql: str) -> list[str]:
    """The statements of a migration file (comments removed; no string literals hold ';')."""
    body = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in body.split(";") if s.strip()]


def new_endpoint_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def chunk_user_ids(values: Sequence[Any]) -> list[str]:
    """The usable user ids of a chunk's parsed values, unique and sorted."""
    users = set()
    for value in values:
        if isinstance(value, dict):
            user_id = normalize_user_id(value.get("user_id"))
            if user_id is not None:
                users.add(user_id)
    return sorted(users)


class WriteTx(abc.ABC):
    """Bulk primitives of one write transaction. Implemented per backend."""

    #: Whether :meth:`lock_users` must be called. Backends whose write transactions already
    #: exclude each other (SQLite) need no user locks, nor the pass that finds the users.
    locks_users = False

    def lock_users(self, user_ids: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Lock the existing users of a chunk before its event ids are looked up."""

    @abc.abstractmethod
    def lookup_applied(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Content hash of every id in ``event_ids`` that is already applied."""

    @abc.abstractmethod
    def upsert_users(self, users: Sequence[UserDelta]) -> dict[str, int]:
        """Apply the deltas (max last_seen, min first_seen, sums); return each user's
        ``applied_count`` before this change. The rows stay locked until commit."""

    @abc.abstractmethod
    def insert_events(self, rows: Sequence[EventRow], batch_id: str, applied_at: int) -> int:
        """Insert applied events, skipping ids that exist; return how many were inserted."""

    @abc.abstractmethod
    def add_user_counts(self, counts: Sequence[tuple[str, str, int]]) -> None:
        """Add per-(user, type) counts."""

    @abc.abstractmethod
    def insert_outcomes(self, batch_id: str, outcomes: Sequence[Outcome]) -> None:
        """Store the outcomes of events that were not applied."""

    @abc.abstractmethod
    def enabled_endpoints(self) -> list[Endpoint]:
        """Endpoints that receive deliveries."""

    @abc.abstractmethod
    def take_entity_sequences(self, wanted: Mapping[str, int]) -> dict[str, int]:
        """Reserve ``n`` sequence numbers per entity key; return the last one used before."""

    @abc.abstractmethod
    def insert_deliveries(self, rows: Sequence[DeliveryRow], now: int) -> None:
        """Create PENDING deliveries."""

    @abc.abstractmethod
    def save_batch(self, report: Report) -> None:
        """Store a finished batch's counts."""


class Store(abc.ABC):
    """One eventledger database. Open one with :func:`eventledger.store.open_store`."""

    backend: str
    url: str

    # -- lifecycle ---------------------------------------------------------------------
    @abc.abstractmethod
    def upgrade(self) -> int:
        """Create or migrate the schema; return the version now in force."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version of the database (0 when empty)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def write_transaction(self) -> AbstractContextManager[WriteTx]:
        """A write transaction; raising :class:`RetryTransaction` inside rolls it back."""

    @abc.abstractmethod
    def is_retryable(self, exc: BaseException) -> bool:
        """Whether a failed transaction may simply be run again (deadlock, busy...)."""

    # -- applying events ---------------------------------------------------------------
    def apply_chunk(
        self,
        values: Sequence[Any],
        processor: Processor,
        *,
        first_index: int,
        batch_id: str,
    ) -> ChunkDecision:
        """Decide and apply one chunk in one transaction; return the final decisions.

        The processor is pure, so when a concurrent writer applied one of our ids first (or
        the database reports a deadlock) the whole chunk is decided again on fresh state.
        """
        ids = processor.event_ids(values)
        users: list[str] | None = None  # computed only for backends that lock users
        for attempt in range(MAX_CHUNK_ATTEMPTS):
            try:
                with self.write_transaction() as tx:
                    # Lock first, then look up: a concurrent writer of these users finishes
                    # before our lookup, instead of applying our ids behind its back.
                    if tx.locks_users:
                        users = chunk_user_ids(values) if users is None else users
                        tx.lock_users(users)
                    decision = processor.decide_chunk(values, tx.lookup_applied(ids), first_index)
                    self._write_chunk(tx, decision, batch_id)
                return decision
            except RetryTransaction:
                continue
            except Exception as exc:
                if attempt + 1 < MAX_CHUNK_ATTEMPTS and self.is_retryable(exc):
                    continue
                raise
        raise ConflictError(f"chunk of batch {batch_id} kept conflicting with other writers")

    def _write_chunk(self, tx: WriteTx, decision: ChunkDecision, batch_id: str) -> None:
        plan = plan_chunk(decision)
        before = tx.upsert_users(plan.users)
        applied_at = now_us()
        rows: list[EventRow] = []
        taken: Counter[str] = Counter()
        for ev in decision.applied:
            taken[ev.user_id] += 1
            rows.append(EventRow(ev, before[ev.user_id] + taken[ev.user_id]))
        # Sorted by id so that concurrent writers take index locks in one order.
        rows.sort(key=lambda r: r.event.event_id)
        if rows and tx.insert_events(rows, batch_id, applied_at) != len(rows):
            raise RetryTransaction  # another writer applied one of these ids meanwhile
        tx.add_user_counts(plan.counts)
        tx.insert_outcomes(
            batch_id, [o for o in decision.outcomes if o.outcome is not OutcomeKind.APPLIED]
        )
        if rows:
            endpoints = tx.enabled_endpoints()
            if endpoints:
                tx.insert_deliveries(self._delivery_rows(tx, endpoints, rows), applied_at)

    @staticmethod
    def _delivery_rows(
        tx: WriteTx, endpoints: Sequence[Endpoint], rows: Sequence[EventRow]
    ) -> list[DeliveryRow]:
        pairs = []
        by_apply_order = sorted(rows, key=lambda r: (r.event.user_id, r.user_seq))
        wanted: Counter[str] = Counter()
        for endpoint in endpoints:
            for row in by_apply_order:
                if endpoint.matches(row.event.type):
                    key = f"{endpoint.endpoint_id}/{row.event.user_id}"
                    wanted[key] += 1
                    pairs.append((endpoint, key, row))
        if not pairs:
            return []
        last = tx.take_entity_sequences(dict(sorted(wanted.items())))
        out = []
        for endpoint, key, row in pairs:
            last[key] += 1
            ev = row.event
            out.append(
                DeliveryRow(
                    f"{endpoint.endpoint_id}/{ev.event_id}",
                    ev.event_id,
                    key,
                    last[key],
                    endpoint.endpoint_id,
                    endpoint.url,
                    event_payload(ev, row.user_seq),
                )
            )
        return out

    def save_batch(self, report: Report) -> None:
        """Store the finished report's counts (its outcomes were stored chunk by chunk)."""
        with self.write_transaction() as tx:
            tx.save_batch(report)

    # -- reads ---------------------------------------------------------------------------
    @abc.abstractmethod
    def get_user(self, user_id: str) -> tuple[int, int | None, int, float] | None:
        """(last_seen_at, first_seen_at, applied_count, total_value) or None."""

    @abc.abstractmethod
    def get_user_counts(self, user_id: str) -> dict[str, int]:
        """Applied events of the user by type."""

    @abc.abstractmethod
    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        """A stored report's counts, or None."""

    @abc.abstractmethod
    def iter_batch_outcomes(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every outcome of a stored batch, in input order."""

    # -- verification: recompute from the events ---------------------------------------
    @abc.abstractmethod
    def recount_from_events(self, user_id: str | None) -> list[tuple[str, str, int, float, int]]:
        """(user_id, type, n, sum of prices, min timestamp) from the stored events, grouped by
        user and type, in SQL; one user or all."""

    @abc.abstractmethod
    def maintained_users(self, user_id: str | None) -> list[tuple[str, int, float, int | None]]:
        """(user_id, applied_count, total_value, first_seen_at) of the maintained aggregate."""

    @abc.abstractmethod
    def maintained_counts(self, user_id: str | None) -> list[tuple[str, str, int]]:
        """(user_id, type, n) of the maintained aggregate."""

    # -- deliveries ----------------------------------------------------------------------
    def deliveries(self) -> Any:
        """The delivery repository of this store (used by the dispatcher and the API)."""
        import importlib

        module = importlib.import_module(f"eventledger.store.deliveries_{self.backend}")
        return module.open_repository(self)

    # -- endpoints -----------------------------------------------------------------------
    @abc.abstractmethod
    def add_endpoint(self, endpoint: Endpoint) -> None:
        """Register an endpoint."""

    @abc.abstractmethod
    def list_endpoints(self) -> list[Endpoint]:
        """All registered endpoints."""

    @abc.abstractmethod
    def remove_endpoint(self, endpoint_id: str) -> bool:
        """Remove an endpoint; False when it did not exist."""

    @abc.abstractmethod
    def set_endpoint_enabled(self, endpoint_id: str, enabled: bool) -> bool:
        """Enable or disable an endpoint; False when it did not exist."""

    # -- shared shapes -------------------------------------------------------------------
    def activity(self, user_id: str) -> dict[str, Any] | None:
        """The user's activity (SPEC §3), or None for a user never seen."""
        row = self.get_user(user_id)
        if row is None:
            return None
        last_seen, first_seen, applied, total_value = row
        counts = self.get_user_counts(user_id)
        return {
            "user_id": user_id,
            "last_seen_at": format_us(last_seen),
            "first_seen_at": format_us(first_seen),
            "applied": applied,
            "counts": dict(sorted(counts.items())),
            "total_value": float(total_value),
        }

    def summary(self, user_id: str) -> dict[str, Any]:
        """The seed's summary shape; zeros for a user without events."""
        row = self.get_user(user_id)
        counts = self.get_user_counts(user_id) if row is not None else {}
        result: dict[str, Any] = {t: int(counts.get(t, 0)) for t in SUMMARY_TYPES}
        result["total_value"] = float(row[3]) if row is not None else 0.0
        return result

    def report(self, batch_id: str) -> dict[str, Any] | None:
        """A stored report in the JSON form of SPEC §2, or None."""
        head = self.get_batch(batch_id)
        if head is None:
            return None
        head["outcomes"] = list(self.iter_batch_outcomes(batch_id))
        return head


def check_url_scheme(url: str, scheme_prefixes: tuple[str, ...]) -> None:
    if not url.startswith(scheme_prefixes):
        raise ConfigError(f"unsupported database URL {url!r}")
