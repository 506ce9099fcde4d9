"""SQLite backend: the embedded default (stdlib ``sqlite3``, WAL mode)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

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
    split_statements,
)

# SQLite's limit on bound parameters is 32766 since 3.32; stay well below for old builds.
_IN_BATCH = 900
BUSY_TIMEOUT_S = 60.0


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL (``sqlite:///:memory:`` is refused)."""
    # sqlite:///rel.db -> rel.db ; sqlite:////abs/x.db -> /abs/x.db
    path = url.removeprefix("sqlite://").removeprefix("/")
    if not path or path == ":memory:":
        raise StoreError("sqlite URL needs a file path, e.g. sqlite:///eventledger.db")
    return path


def connect(path: str) -> sqlite3.Connection:
    """A connection with the pragmas eventledger relies on."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise StoreError(f"cannot open database {path}: directory {parent} does not exist")
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA cache_size=-65536")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. On a new file opened by several processes at once, SQLite reports
    "database is locked" here at once, without waiting in the busy handler: retry."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _chunks(items: Sequence[Any], size: int = _IN_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _SQLiteTx(WriteTx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def lookup_applied(self, event_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(event_ids))
        for part in _chunks(unique):
            marks = ",".join("?" * len(part))
            found.update(
                self.conn.execute(
                    f"SELECT event_id, content_hash FROM events WHERE event_id IN ({marks})",
                    part,
                )
            )
        return found

    def upsert_users(self, users: Sequence[UserDelta]) -> dict[str, int]:
        before: dict[str, int] = {}
        applying = [u.user_id for u in users if u.applied]
        for part in _chunks(applying):
            marks = ",".join("?" * len(part))
            before.update(
                self.conn.execute(
                    f"SELECT user_id, applied_count FROM users WHERE user_id IN ({marks})", part
                )
            )
        self.conn.executemany(
            """
            INSERT INTO users (user_id, last_seen_at, first_seen_at, applied_count, total_value)
            VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (user_id) DO UPDATE SET
                last_seen_at = max(last_seen_at, excluded.last_seen_at),
                first_seen_at = CASE
                    WHEN excluded.first_seen_at IS NULL THEN first_seen_at
                    WHEN first_seen_at IS NULL THEN excluded.first_seen_at
                    ELSE min(first_seen_at, excluded.first_seen_at) END,
                applied_count = applied_count + excluded.applied_count,
                total_value = total_value + excluded.total_value
            """,
            [(u.user_id, u.last_seen_at, u.first_seen_at, u.applied, u.total_value) for u in users],
        )
        return {u.user_id: before.get(u.user_id, 0) for u in users}

    def insert_events(self, rows: Sequence[EventRow], batch_id: str, applied_at: int) -> int:
        # The write lock is held since BEGIN IMMEDIATE: the ids looked up are still absent.
        cur = self.conn.executemany(
            "INSERT INTO events (event_id, user_id, type, ts_us, metadata, price, sequence,"
            " user_seq, content_hash, batch_id, batch_index, applied_at_us)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            [
                (
                    e.event_id,
                    e.user_id,
                    e.type,
                    e.timestamp_us,
                    e.metadata_json.decode(),
                    e.price,
                    e.sequence,
                    r.user_seq,
                    e.content_hash,
                    batch_id,
                    e.index,
                    applied_at,
                )
                for r in rows
                for e in (r.event,)
            ],
        )
        return cur.rowcount

    def add_user_counts(self, counts: Sequence[tuple[str, str, int]]) -> None:
        self.conn.executemany(
            "INSERT INTO user_counts (user_id, type, n) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, type) DO UPDATE SET n = n + excluded.n",
            counts,
        )

    def insert_outcomes(self, batch_id: str, outcomes: Sequence[Outcome]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO batch_outcomes"
            " (batch_id, batch_index, event_id, user_id, outcome, reason, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    batch_id,
                    o.index,
                    o.event_id,
                    o.user_id,
                    o.outcome.value,
                    o.reason.value if o.reason is not None else None,
                    o.detail,
                )
                for o in outcomes
            ],
        )

    def enabled_endpoints(self) -> list[Endpoint]:
        return [e for e in _endpoints(self.conn) if e.enabled]

    def take_entity_sequences(self, wanted: Mapping[str, int]) -> dict[str, int]:
        keys = list(wanted)
        last: dict[str, int] = {}
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            last.update(
                self.conn.execute(
                    "SELECT entity_key, last_sequence FROM entity_sequences"
                    f" WHERE entity_key IN ({marks})",
                    part,
                )
            )
        self.conn.executemany(
            "INSERT INTO entity_sequences (entity_key, last_sequence) VALUES (?, ?)"
            " ON CONFLICT (entity_key) DO UPDATE SET last_sequence = excluded.last_sequence",
            [(k, last.get(k, 0) + n) for k, n in wanted.items()],
        )
        return {k: last.get(k, 0) for k in keys}

    def insert_deliveries(self, rows: Sequence[DeliveryRow], now: int) -> None:
        self.conn.executemany(
            "INSERT INTO deliveries (delivery_id, webhook_id, entity_key, sequence, endpoint_id,"
            " target_url, payload, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'PENDING', ?, ?)",
            [
                (
                    d.delivery_id,
                    d.webhook_id,
                    d.entity_key,
                    d.sequence,
                    d.endpoint_id,
                    d.target_url,
                    d.payload,
                    now,
                    now,
                )
                for d in rows
            ],
        )

    def save_batch(self, report: Report) -> None:
        self.conn.execute(
            "INSERT INTO batches (batch_id, received_at, total, applied, duplicates, rejected,"
            " rejected_by_reason, balanced, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                report.batch_id,
                report.received_at_us,
                report.total,
                report.applied,
                report.duplicates,
                report.rejected,
                orjson.dumps(dict(sorted(report.rejected_by_reason.items()))).decode(),
                int(report.balanced),
                now_us(),
            ),
        )


def _endpoint_from_row(row: Sequence[Any]) -> Endpoint:
    types = orjson.loads(row[3]) if row[3] is not None else None
    return Endpoint(
        endpoint_id=row[0],
        url=row[1],
        secret=row[2],
        event_types=tuple(types) if types is not None else None,
        enabled=bool(row[4]),
        created_at_us=row[5],
    )


def _endpoints(conn: sqlite3.Connection) -> list[Endpoint]:
    rows = conn.execute(
        "SELECT endpoint_id, url, secret, event_types, enabled, created_at FROM endpoints"
        " ORDER BY created_at, endpoint_id"
    ).fetchall()
    return [_endpoint_from_row(r) for r in rows]


class SQLiteStore(Store):
    """A store in one SQLite file. Safe to share between threads (one connection, locked)."""

    backend = "sqlite"

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._lock = threading.RLock()
        self._conn = connect(self.path)
        if upgrade:
            self.upgrade()

    # -- lifecycle ---------------------------------------------------------------------
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def upgrade(self) -> int:
        migrations = load_migrations("sqlite")
        latest = migrations[-1][0]
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                current = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
                if current > latest:
                    self._conn.execute("ROLLBACK")
                    raise SchemaError(
                        f"database schema v{current} is newer than this eventledger (v{latest})"
                    )
                for version, sql in migrations:
                    if version > current:
                        for statement in split_statements(sql):
                            self._conn.execute(statement)
                        self._conn.execute(f"PRAGMA user_version={version}")
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"cannot upgrade the schema of {self.path}: {exc}") from exc
        return latest

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def write_transaction(self) -> Iterator[WriteTx]:
        with self._lock:
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock now (waiting up to busy_timeout), so what
                # the transaction reads cannot change before it commits.
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
            try:
                yield _SQLiteTx(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if self.is_retryable(exc):
                    raise  # the caller runs the transaction again
                raise StoreError(f"database error on {self.path}: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads (wrapping driver errors)."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"database error on {self.path}: {exc}") from exc

    # -- reads ---------------------------------------------------------------------------
    def get_user(self, user_id: str) -> tuple[int, int | None, int, float] | None:
        with self.read() as conn:
            row = conn.execute(
                "SELECT last_seen_at, first_seen_at, applied_count, total_value FROM users"
                " WHERE user_id = ?",
                (user_id,),
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def get_user_counts(self, user_id: str) -> dict[str, int]:
        with self.read() as conn:
            return dict(
                conn.execute("SELECT type, n FROM user_counts WHERE user_id = ?", (user_id,))
            )

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(
                "SELECT batch_id, received_at, total, applied, duplicates, rejected,"
                " rejected_by_reason, balanced FROM batches WHERE batch_id = ?",
                (batch_id,),
            ).fetchone()
        if row is None:
            return None
        return {
            "batch_id": row[0],
            "received_at": format_us(row[1]),
            "total": row[2],
            "applied": row[3],
            "duplicates": row[4],
            "rejected": row[5],
            "rejected_by_reason": orjson.loads(row[6]),
            "balanced": bool(row[7]),
        }

    def iter_batch_outcomes(self, batch_id: str) -> Iterator[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(
                "SELECT batch_index, event_id, user_id, 'applied', NULL, NULL FROM events"
                " WHERE batch_id = ?1"
                " UNION ALL SELECT batch_index, event_id, user_id, outcome, reason, detail"
                " FROM batch_outcomes WHERE batch_id = ?1 ORDER BY 1",
                (batch_id,),
            ).fetchall()
        for r in rows:
            yield outcome_dict(r)

    # -- verification --------------------------------------------------------------------
    def _rows(self, sql: str, user_id: str | None) -> list[Any]:
        where = " WHERE user_id = ?" if user_id is not None else ""
        with self.read() as conn:
            return conn.execute(
                sql.format(where=where), () if user_id is None else (user_id,)
            ).fetchall()

    def recount_from_events(self, user_id: str | None) -> list[tuple[str, str, int, float, int]]:
        return self._rows(
            "SELECT user_id, type, count(*), coalesce(sum(price), 0.0), min(ts_us) FROM events"
            "{where} GROUP BY user_id, type ORDER BY user_id, type",
            user_id,
        )

    def maintained_users(self, user_id: str | None) -> list[tuple[str, int, float, int | None]]:
        return self._rows(
            "SELECT user_id, applied_count, total_value, first_seen_at FROM users{where}"
            " ORDER BY user_id",
            user_id,
        )

    def maintained_counts(self, user_id: str | None) -> list[tuple[str, str, int]]:
        return self._rows(
            "SELECT user_id, type, n FROM user_counts{where} ORDER BY user_id, type", user_id
        )

    # -- endpoints -----------------------------------------------------------------------
    def add_endpoint(self, endpoint: Endpoint) -> None:
        types = orjson.dumps(list(endpoint.event_types)).decode() if endpoint.event_types else None
        with self.write_transaction():
            self._conn.execute(
                "INSERT INTO endpoints (endpoint_id, url, secret, event_types, enabled,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    endpoint.endpoint_id,
                    endpoint.url,
                    endpoint.secret,
                    types,
                    int(endpoint.enabled),
                    endpoint.created_at_us,
                ),
            )

    def list_endpoints(self) -> list[Endpoint]:
        with self.read() as conn:
            return _endpoints(conn)

    def remove_endpoint(self, endpoint_id: str) -> bool:
        with self.write_transaction():
            cur = self._conn.execute("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))
            if cur.rowcount == 0:
                return False
            # Its unfinished deliveries would otherwise go out unsigned to a removed URL.
            now = now_us()
            self._conn.execute(REMOVED_ENDPOINT_SKIP.replace("%s", "?"), (now, now, endpoint_id))
            return True

    def set_endpoint_enabled(self, endpoint_id: str, enabled: bool) -> bool:
        with self.write_transaction():
            cur = self._conn.execute(
                "UPDATE endpoints SET enabled = ? WHERE endpoint_id = ?",
                (int(enabled), endpoint_id),
            )
            return cur.rowcount > 0
