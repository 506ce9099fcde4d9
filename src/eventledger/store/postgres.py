"""PostgreSQL backend (psycopg 3): many processes, on any number of hosts, on one database.

Every write primitive is one statement per chunk: the rows travel as arrays and are expanded
server-side with ``unnest`` (one round trip whatever the chunk size). Exactly-once holds
across processes because a chunk's events are inserted with ``ON CONFLICT DO NOTHING`` on the
event id: when another writer applied one of the ids after our lookup, fewer rows are inserted
than decided, and :meth:`Store.apply_chunk` rolls back and decides the chunk again. The user
rows are locked by their upsert (in user id order, so writers queue instead of deadlocking)
until commit, which keeps per-user sequences gap-free and counts exact.

Connections come from a ``psycopg_pool.ConnectionPool``, so one store may be shared by the
threads of the HTTP service. Statements are never prepared server-side (``prepare_threshold``
None): a generic plan chosen after a few executions was measured to be much slower for
skewed users (see MEASURED.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ..errors import SchemaError, StoreError
from ..model import Outcome, Report
from ..timeutil import format_us, now_us
from .base import (
    REMOVED_ENDPOINT_SKIP,
    DeliveryRow,
    Endpoint,
    EventRow,
    Store,
    UserDelta,
    WriteTx,
    load_migrations,
    outcome_dict,
)

DEFAULT_POOL_SIZE = 8
CONNECT_TIMEOUT_S = 10
# pg_advisory_xact_lock key serialising schema upgrades between processes ("eventled").
UPGRADE_LOCK_KEY = 0x6576656E746C6564
VERSION_TABLE = "eventledger_schema_version"
VERSION_TABLE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    " version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
)
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}


def describe_target(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL, for messages (never the password)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "the configured server"
    host = str(info.get("host") or info.get("hostaddr") or "localhost")
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def _password(url: str) -> str | None:
    try:
        value = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return None
    return str(value) if value else None


def _one_line(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"\s+", " ", text).strip()


class _PgTx(WriteTx):
    """The write primitives on one connection inside a transaction."""

    locks_users = True

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def lock_users(self, user_ids: Sequence[str]) -> None:
        if not user_ids:
            return
        # In the given order (sorted by code point, as upsert_users goes), so that writers
        # queue instead of deadlocking. Users not created yet are not locked: their insert
        # waits in upsert_users.
        self.conn.execute(
            "SELECT 1 FROM unnest(%b::text[]) AS i(id) CROSS JOIN LATERAL"
            " (SELECT 1 FROM users WHERE user_id = i.id FOR UPDATE) AS u",
            (list(user_ids),),
        )

    def lookup_applied(self, event_ids: Sequence[str]) -> dict[str, str]:
        if not event_ids:
            return {}
        # One index probe per id. With "event_id = ANY(...)" the planner prefers a sequential
        # scan once the table is large (2000 ids of 170k rows: 18 ms and growing, vs 5 ms);
        # a LIMIT keeps the per-id subquery from being flattened into a hash join.
        cur = self.conn.execute(
            "SELECT e.event_id, e.content_hash FROM unnest(%b::text[]) AS i(id)"
            " CROSS JOIN LATERAL (SELECT event_id, content_hash FROM events"
            " WHERE event_id = i.id LIMIT 1) AS e",
            (list(event_ids),),
        )
        return dict(cur.fetchall())

    def upsert_users(self, users: Sequence[UserDelta]) -> dict[str, int]:
        if not users:
            return {}
        # GREATEST/LEAST skip NULLs: a NULL first_seen_at (no applied event yet) never wins.
        cur = self.conn.execute(
            """
            INSERT INTO users AS u
                (user_id, last_seen_at, first_seen_at, applied_count, total_value)
            SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
                                 %b::float8[])
            ON CONFLICT (user_id) DO UPDATE SET
                last_seen_at = GREATEST(u.last_seen_at, excluded.last_seen_at),
                first_seen_at = LEAST(u.first_seen_at, excluded.first_seen_at),
                applied_count = u.applied_count + excluded.applied_count,
                total_value = u.total_value + excluded.total_value
            RETURNING user_id, applied_count
            """,
            (
                [u.user_id for u in users],
                [u.last_seen_at for u in users],
                [u.first_seen_at for u in users],
                [u.applied for u in users],
                [u.total_value for u in users],
            ),
        )
        after: dict[str, int] = dict(cur.fetchall())
        return {u.user_id: after[u.user_id] - u.applied for u in users}

    def insert_events(self, rows: Sequence[EventRow], batch_id: str, applied_at: int) -> int:
        if not rows:
            return 0
        events = [r.event for r in rows]
        cur = self.conn.execute(
            """
            INSERT INTO events (event_id, user_id, type, ts_us, metadata, price, sequence,
                                user_seq, content_hash, batch_id, batch_index, applied_at_us)
            SELECT e.id, e.usr, e.typ, e.ts, e.meta::jsonb, e.price, e.seq, e.useq, e.hash,
                   %s, e.idx, %s
            FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[],
                        %b::float8[], %b::bigint[], %b::bigint[], %b::text[], %b::bigint[])
                 AS e(id, usr, typ, ts, meta, price, seq, useq, hash, idx)
            ON CONFLICT (event_id) DO NOTHING
            """,
            (
                batch_id,
                applied_at,
                [e.event_id for e in events],
                [e.user_id for e in events],
                [e.type for e in events],
                [e.timestamp_us for e in events],
                [e.metadata_json.decode() for e in events],
                [e.price for e in events],
                [e.sequence for e in events],
                [r.user_seq for r in rows],
                [e.content_hash for e in events],
                [e.index for e in events],
            ),
        )
        return cur.rowcount

    def add_user_counts(self, counts: Sequence[tuple[str, str, int]]) -> None:
        if not counts:
            return
        self.conn.execute(
            """
            INSERT INTO user_counts AS c (user_id, type, n)
            SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[])
            ON CONFLICT (user_id, type) DO UPDATE SET n = c.n + excluded.n
            """,
            ([c[0] for c in counts], [c[1] for c in counts], [c[2] for c in counts]),
        )

    def insert_outcomes(self, batch_id: str, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        self.conn.execute(
            """
            INSERT INTO batch_outcomes AS o
                (batch_id, batch_index, event_id, user_id, outcome, reason, detail)
            SELECT %s, * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[],
                                     %b::text[], %b::text[])
            ON CONFLICT (batch_id, batch_index) DO UPDATE SET
                event_id = excluded.event_id, user_id = excluded.user_id,
                outcome = excluded.outcome, reason = excluded.reason, detail = excluded.detail
            """,
            (
                batch_id,
                [o.index for o in outcomes],
                [o.event_id for o in outcomes],
                [o.user_id for o in outcomes],
                [o.outcome.value for o in outcomes],
                [o.reason.value if o.reason is not None else None for o in outcomes],
                [o.detail for o in outcomes],
            ),
        )

    def enabled_endpoints(self) -> list[Endpoint]:
        return [e for e in _endpoints(self.conn) if e.enabled]

    def take_entity_sequences(self, wanted: Mapping[str, int]) -> dict[str, int]:
        if not wanted:
            return {}
        keys = list(wanted)
        cur = self.conn.execute(
            """
            INSERT INTO entity_sequences AS s (entity_key, last_sequence)
            SELECT * FROM unnest(%b::text[], %b::bigint[])
            ON CONFLICT (entity_key) DO UPDATE SET
                last_sequence = s.last_sequence + excluded.last_sequence
            RETURNING entity_key, last_sequence
            """,
            (keys, [wanted[k] for k in keys]),
        )
        after: dict[str, int] = dict(cur.fetchall())
        return {k: after[k] - wanted[k] for k in keys}

    def insert_deliveries(self, rows: Sequence[DeliveryRow], now: int) -> None:
        if not rows:
            return
        self.conn.execute(
            """
            INSERT INTO deliveries (delivery_id, webhook_id, entity_key, sequence, endpoint_id,
                                    target_url, payload, state, created_at, updated_at)
            SELECT d.*, 'PENDING', %s, %s
            FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[],
                        %b::text[], %b::bytea[]) AS d
            """,
            (
                now,
                now,
                [d.delivery_id for d in rows],
                [d.webhook_id for d in rows],
                [d.entity_key for d in rows],
                [d.sequence for d in rows],
                [d.endpoint_id for d in rows],
                [d.target_url for d in rows],
                [d.payload for d in rows],
            ),
        )

    def save_batch(self, report: Report) -> None:
        self.conn.execute(
            "INSERT INTO batches (batch_id, received_at, total, applied, duplicates, rejected,"
            " rejected_by_reason, balanced, completed_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                report.batch_id,
                report.received_at_us,
                report.total,
                report.applied,
                report.duplicates,
                report.rejected,
                Jsonb(dict(sorted(report.rejected_by_reason.items()))),
                report.balanced,
                now_us(),
            ),
        )


def _endpoints(conn: psycopg.Connection[Any]) -> list[Endpoint]:
    rows = conn.execute(
        "SELECT endpoint_id, url, secret, event_types, enabled, created_at FROM endpoints"
        ' ORDER BY created_at, endpoint_id COLLATE "C"'
    ).fetchall()
    return [
        Endpoint(
            endpoint_id=r[0],
            url=r[1],
            secret=r[2],
            event_types=tuple(r[3]) if r[3] is not None else None,
            enabled=bool(r[4]),
            created_at_us=r[5],
        )
        for r in rows
    ]


class PostgresStore(Store):
    """A store in one PostgreSQL database, shared safely by threads and processes.

    ``connection()`` lends a pooled autocommit connection to other parts of eventledger
    (the delivery repository); driver errors raised inside become :class:`StoreError`.
    """

    backend = "postgres"

    def __init__(self, url: str, *, upgrade: bool = True, pool_size: int = DEFAULT_POOL_SIZE):
        self.url = url
        self.target = describe_target(url)
        self._secret = _password(url)
        self._kwargs = dict(_CONNECTION_KWARGS)
        try:
            if "connect_timeout" not in conninfo_to_dict(url):
                self._kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        except psycopg.Error as exc:
            raise StoreError(f"invalid PostgreSQL URL: {self._message(exc)}") from exc
        # A first direct connection gives a clear error at once when the server cannot be
        # reached (the pool would only retry in the background), and runs the upgrade.
        with self._connect() as conn:
            if upgrade:
                self._upgrade(conn)
        self.pool: ConnectionPool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=self._kwargs,
            open=False,
            name=f"eventledger {self.target}",
        )
        self._closed = False
        try:
            # Wait for the first pooled connection: no connection appears later behind the
            # caller's back (tests count server backends), and failures surface here.
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.target}: {self._message(exc)}"
            ) from exc

    # -- connections and errors ----------------------------------------------------------
    def _message(self, exc: BaseException) -> str:
        return _one_line(str(exc), self._secret) or type(exc).__name__

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, **self._kwargs)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.target}: {self._message(exc)}"
            ) from exc

    def _wrap(self, exc: psycopg.Error) -> StoreError:
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return SchemaError(
                f"the eventledger schema is missing in PostgreSQL at {self.target}"
                f" (run `eventledger db upgrade`): {self._message(exc)}"
            )
        return StoreError(f"PostgreSQL error at {self.target}: {self._message(exc)}")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; psycopg errors become :class:`StoreError`."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise self._wrap(exc) from exc

    @contextmanager
    def write_transaction(self) -> Iterator[WriteTx]:
        # A RetryTransaction raised inside rolls back (conn.transaction) and propagates.
        with self.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    def is_retryable(self, exc: BaseException) -> bool:
        cause = exc.__cause__ if isinstance(exc, StoreError) else exc
        return isinstance(cause, _RETRYABLE)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.close()

    # -- schema --------------------------------------------------------------------------
    @staticmethod
    def _version(conn: psycopg.Connection[Any]) -> int:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSION_TABLE,)).fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}").fetchone()
        return int(row[0]) if row else 0

    def schema_version(self) -> int:
        with self._connect() as conn:
            try:
                return self._version(conn)
            except psycopg.Error as exc:
                raise self._wrap(exc) from exc

    def upgrade(self) -> int:
        with self._connect() as conn:
            return self._upgrade(conn)

    def _upgrade(self, conn: psycopg.Connection[Any]) -> int:
        migrations = load_migrations("postgres")
        latest = migrations[-1][0]
        try:
            current = self._version(conn)
            if current == latest:
                return latest
            with conn.transaction():
                # Several processes may start on a new database at once: one migrates, the
                # others wait here and then find the work done.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (UPGRADE_LOCK_KEY,))
                conn.execute(VERSION_TABLE_DDL)
                current = self._version(conn)
                if current > latest:
                    raise SchemaError(
                        f"database schema v{current} at {self.target} is newer than this"
                        f" eventledger (v{latest})"
                    )
                for version, sql in migrations:
                    if version > current:
                        # The whole file in one call: PostgreSQL runs several statements
                        # (and function bodies containing ';') in one simple query.
                        conn.execute(sql.encode())
                        conn.execute(
                            f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (%s, %s)",
                            (version, now_us()),
                        )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot upgrade the schema at {self.target}: {self._message(exc)}"
            ) from exc
        return latest

    # -- reads ---------------------------------------------------------------------------
    def _fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def get_user(self, user_id: str) -> tuple[int, int | None, int, float] | None:
        rows = self._fetch(
            "SELECT last_seen_at, first_seen_at, applied_count, total_value FROM users"
            " WHERE user_id = %s",
            (user_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return (r[0], r[1], r[2], float(r[3]))

    def get_user_counts(self, user_id: str) -> dict[str, int]:
        return dict(self._fetch("SELECT type, n FROM user_counts WHERE user_id = %s", (user_id,)))

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        rows = self._fetch(
            "SELECT batch_id, received_at, total, applied, duplicates, rejected,"
            " rejected_by_reason, balanced FROM batches WHERE batch_id = %s",
            (batch_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "batch_id": r[0],
            "received_at": format_us(r[1]),
            "total": r[2],
            "applied": r[3],
            "duplicates": r[4],
            "rejected": r[5],
            # jsonb keeps its own key order: restore the report's (sorted) one.
            "rejected_by_reason": dict(sorted(r[6].items())),
            "balanced": bool(r[7]),
        }

    def iter_batch_outcomes(self, batch_id: str) -> Iterator[dict[str, Any]]:
        rows = self._fetch(
            "SELECT batch_index, event_id, user_id, 'applied', NULL, NULL FROM events"
            " WHERE batch_id = %(b)s"
            " UNION ALL SELECT batch_index, event_id, user_id, outcome, reason, detail"
            " FROM batch_outcomes WHERE batch_id = %(b)s ORDER BY 1",
            {"b": batch_id},
        )
        for r in rows:
            yield outcome_dict(r)

    # -- verification --------------------------------------------------------------------
    def _rows(self, sql: str, user_id: str | None) -> list[Any]:
        where = " WHERE user_id = %s" if user_id is not None else ""
        return self._fetch(sql.format(where=where), () if user_id is None else (user_id,))

    def recount_from_events(self, user_id: str | None) -> list[tuple[str, str, int, float, int]]:
        return [
            (r[0], r[1], r[2], float(r[3]), r[4])
            for r in self._rows(
                "SELECT user_id, type, count(*), coalesce(sum(price), 0.0), min(ts_us)"
                ' FROM events{where} GROUP BY user_id, type ORDER BY user_id COLLATE "C",'
                ' type COLLATE "C"',
                user_id,
            )
        ]

    def maintained_users(self, user_id: str | None) -> list[tuple[str, int, float, int | None]]:
        return [
            (r[0], r[1], float(r[2]), r[3])
            for r in self._rows(
                "SELECT user_id, applied_count, total_value, first_seen_at FROM users{where}"
                ' ORDER BY user_id COLLATE "C"',
                user_id,
            )
        ]

    def maintained_counts(self, user_id: str | None) -> list[tuple[str, str, int]]:
        return [
            (r[0], r[1], r[2])
            for r in self._rows(
                "SELECT user_id, type, n FROM user_counts{where}"
                ' ORDER BY user_id COLLATE "C", type COLLATE "C"',
                user_id,
            )
        ]

    # -- endpoints -----------------------------------------------------------------------
    def add_endpoint(self, endpoint: Endpoint) -> None:
        types = Jsonb(list(endpoint.event_types)) if endpoint.event_types else None
        with self.connection() as conn:
            conn.execute(
                "INSERT INTO endpoints (endpoint_id, url, secret, event_types, enabled,"
                " created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    endpoint.endpoint_id,
                    endpoint.url,
                    endpoint.secret,
                    types,
                    endpoint.enabled,
                    endpoint.created_at_us,
                ),
            )

    def list_endpoints(self) -> list[Endpoint]:
        with self.connection() as conn:
            return _endpoints(conn)

    def remove_endpoint(self, endpoint_id: str) -> bool:
        with self.connection() as conn, conn.transaction():
            cur = conn.execute("DELETE FROM endpoints WHERE endpoint_id = %s", (endpoint_id,))
            if cur.rowcount == 0:
                return False
            now = now_us()
            conn.execute(REMOVED_ENDPOINT_SKIP, (now, now, endpoint_id))
            return True

    def set_endpoint_enabled(self, endpoint_id: str, enabled: bool) -> bool:
        with self.connection() as conn:
            cur = conn.execute(
                "UPDATE endpoints SET enabled = %s WHERE endpoint_id = %s",
                (enabled, endpoint_id),
            )
            return cur.rowcount > 0
