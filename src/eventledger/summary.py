"""Per-user activity summaries (SPEC §3): existing-table mode and verification.

Two ways to answer ``fetch_user_activity_summary(user_id)``:

* On eventledger's own store the answer comes from an aggregate maintained on apply
  (``users`` and ``user_counts``, see :meth:`eventledger.store.Store.summary`);
  :func:`verify_store` recomputes that aggregate from the stored events in SQL and lists
  every difference.
* :class:`ExistingTable` reads a legacy PostgreSQL table (``id, user_id, type, metadata``)
  without changing anything in it: one aggregate statement in a read-only transaction. It
  gives the same answer as the legacy Python code (:mod:`eventledger.legacy`, the parity
  oracle) without moving a single row into Python.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InputError, StoreError

if TYPE_CHECKING:
    import psycopg

    from .store import Store

__all__ = [
    "ExistingTable",
    "Mismatch",
    "UserIdError",
    "VerifyResult",
    "existing_table_query",
    "parse_legacy_user_id",
    "parse_table_name",
    "verify_store",
]

BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
DEFAULT_CONNECT_TIMEOUT_S = 10


class UserIdError(InputError, ValueError):
    """A user id that cannot be a legacy ``user_id`` (a BIGINT)."""


# -- the legacy price rule in SQL ---------------------------------------------------------
#
# The legacy code adds float(metadata["price"]) when the price is present, truthy and
# convertible. Python's float() accepts more than PostgreSQL's float8 input and never fails
# on overflow, while a failing cast in SQL would fail the whole summary. So the expression
# below decides per JSON type, and only casts text it has checked:
#
# * number: PostgreSQL prints JSONB numbers without an exponent; psycopg's json.loads turns
#   them into int (no decimal point) or float. Up to 300 characters the value is within
#   (1e-300, 1e300) and casts as it is. Longer: an integer beyond the float range gives
#   OverflowError in Python (nothing added), a decimal gives +-inf.
# * string: float() first maps Unicode white space to ' ' and Unicode decimal digits to
#   ASCII (translate), strips, then accepts [sign] digits with single underscores between
#   them, '.', an exponent, or inf/infinity/nan in any case. Plain decimals take a fast path;
#   the rest is checked against that grammar and converted through numeric, with values
#   past the float range becoming +-inf (as float() does) and below 1e-290 becoming 0.
# * true counts 1.0 (float(True)); false, null, "", arrays and objects add nothing.
#
# Cases documented as not matched exactly (tests show them): a magnitude below 1e-290 adds
# 0 instead of that tiny value; a price string longer than 10,000 characters, or one with an
# exponent beyond +-999 and a mantissa longer than 300 characters, adds nothing.

# The smallest integer that float() refuses: 2**1024 - 2**970 rounds up to 2**1024.
_FLOAT_OVERFLOW = str(2**1024 - 2**970)
_TINY = "1e-290"
# Prices are summed scaled by 2**-64 so that no partial sum can overflow float8 (PostgreSQL
# raises on overflow where Python gives inf); scaling by a power of two does not change the
# rounding of any step, and unscaling happens in Python, where overflow gives inf.
_SCALE = 2.0**-64
_UNSCALE = 2.0**64


@functools.cache
def _unicode_translation() -> tuple[str, str]:
    """(from, to) for translate(): what float() maps to ASCII before parsing.

    CPython copies ASCII as it is (so only \\t \\n \\v \\f \\r and ' ' are stripped), maps
    other white space to ' ' and other Unicode decimal digits to their ASCII digit.
    """
    src: list[str] = []
    dst: list[str] = []
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        if code < 127:
            # ASCII is copied as it is, and only these are stripped as white space.
            if ch in "\t\n\v\f\r":
                src.append(ch)
                dst.append(" ")
            continue
        if 0xD800 <= code <= 0xDFFF:
            continue
        if ch.isspace():
            src.append(ch)
            dst.append(" ")
        elif not ("0" <= ch <= "9"):
            digit = unicodedata.decimal(ch, None)
            if digit is not None:
                src.append(ch)
                dst.append(str(digit))
    return "".join(src), "".join(dst)


_DIGITS = "[0-9](_?[0-9])*"
_GRAMMAR = (
    rf"^ *[+-]?((({_DIGITS})?\.{_DIGITS}|{_DIGITS}\.?)([eE][+-]?{_DIGITS})?"
    r"|inf|infinity|nan) *$"
)
_FAST_PLAIN = r"^ *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+) *$"
_FAST_EXP = r"^ *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]{1,2} *$"
_SPECIAL = r"^ *[+-]?(inf|infinity|nan) *$"

_QUERY_TEMPLATE = """
SELECT
    count(*) FILTER (WHERE type = 'click'),
    count(*) FILTER (WHERE type = 'view'),
    count(*) FILTER (WHERE type = 'purchase'),
    sum(({price}) * {scale}) FILTER (WHERE type = 'purchase')
FROM {table}
WHERE user_id = %(user_id)s
"""
# No DISTINCT: the primary key (id, user_id) makes id unique within one user, so the legacy
# "keep the first row of each id" never drops a row of a single user's result.

_PRICE_TEMPLATE = """
CASE jsonb_typeof(metadata -> 'price')
WHEN 'number' THEN CASE
    WHEN octet_length(metadata ->> 'price') <= 300 THEN (metadata ->> 'price')::float8
    ELSE {number_slow} END
WHEN 'string' THEN CASE
    WHEN octet_length(metadata ->> 'price') <= 300 AND (metadata ->> 'price') ~ {fast_plain}
        THEN (metadata ->> 'price')::float8
    WHEN octet_length(metadata ->> 'price') <= 40 AND (metadata ->> 'price') ~ {fast_exp}
        THEN (metadata ->> 'price')::float8
    ELSE {string_slow} END
WHEN 'boolean' THEN CASE WHEN metadata -> 'price' = 'true'::jsonb THEN 1.0::float8 END
END
"""

_NUMBER_SLOW = """CASE
    WHEN abs((metadata -> 'price')::numeric) >= {overflow}::numeric THEN CASE
        WHEN scale((metadata -> 'price')::numeric) = 0 THEN NULL
        WHEN (metadata -> 'price')::numeric > 0 THEN 'Infinity'::float8
        ELSE '-Infinity'::float8 END
    WHEN abs((metadata -> 'price')::numeric) < {tiny}::numeric THEN 0.0::float8
    ELSE (metadata -> 'price')::numeric::float8 END"""

# {t}: the translated text; {u}: the same trimmed, without underscores.
_STRING_SLOW = """CASE
    WHEN NOT ({t} ~* {grammar}) THEN NULL
    WHEN {t} ~* {special} THEN btrim({t})::float8
    WHEN length({u}) > 10000 THEN NULL
    WHEN coalesce(length(ltrim(substring({u} from '[eE][+-]?([0-9]+)$'), '0')), 0) <= 3
        THEN CASE
            WHEN {u}::numeric >= {overflow}::numeric THEN 'Infinity'::float8
            WHEN {u}::numeric <= -{overflow}::numeric THEN '-Infinity'::float8
            WHEN abs({u}::numeric) < {tiny}::numeric THEN 0.0::float8
            ELSE {u}::numeric::float8 END
    WHEN substring({u} from '^[^eE]*') !~ '[1-9]' THEN 0.0::float8
    WHEN length(substring({u} from '^[^eE]*')) > 300 THEN NULL
    WHEN {u} ~ '[eE]-' THEN 0.0::float8
    WHEN {u} ~ '^-' THEN '-Infinity'::float8
    ELSE 'Infinity'::float8 END"""


def existing_table_query(table: str) -> psycopg.sql.Composed:
    """The one aggregate statement of existing-table mode for ``table`` (``t`` or ``s.t``).

    Parameters: ``user_id`` and the ``ws_digits_from``/``ws_digits_to`` translation of
    :func:`_unicode_translation`.
    """
    from psycopg import sql

    # The translation strings (~700 characters each) are parameters, sent once per call,
    # rather than literals repeated in the statement text.
    t = sql.SQL("translate(metadata ->> 'price', %(ws_digits_from)s, %(ws_digits_to)s)")
    u = sql.SQL("replace(btrim({}), '_', '')").format(t)
    consts = {"overflow": sql.Literal(_FLOAT_OVERFLOW), "tiny": sql.Literal(_TINY)}
    string_slow = sql.SQL(_STRING_SLOW).format(
        t=t,
        u=u,
        grammar=sql.Literal(_GRAMMAR),
        special=sql.Literal(_SPECIAL),
        **consts,
    )
    price = sql.SQL(_PRICE_TEMPLATE).format(
        number_slow=sql.SQL(_NUMBER_SLOW).format(**consts),
        fast_plain=sql.Literal(_FAST_PLAIN),
        fast_exp=sql.Literal(_FAST_EXP),
        string_slow=string_slow,
    )
    return sql.SQL(_QUERY_TEMPLATE).format(
        price=price,
        scale=sql.SQL("{}::float8").format(sql.Literal(repr(_SCALE))),
        table=sql.Identifier(*parse_table_name(table)),
    )


_NAME_PART = re.compile(r"[^\x00]{1,63}\Z")


def parse_table_name(table: str) -> tuple[str, ...]:
    """``"events"`` or ``"schema.events"`` as identifier parts (quoted later, never pasted)."""
    if not isinstance(table, str):
        raise ConfigError(f"table name must be a string, not {type(table).__name__}")
    parts = tuple(table.split("."))
    if len(parts) > 2 or not all(_NAME_PART.match(p) for p in parts):
        raise ConfigError(
            f"invalid table name {table!r}: use NAME or SCHEMA.NAME (1-63 characters each)"
        )
    return parts


def parse_legacy_user_id(user_id: Any) -> int:
    """The BIGINT value of ``user_id`` (an int or a string of decimal digits)."""
    if isinstance(user_id, bool):
        raise UserIdError("user_id must be an integer, not a boolean")
    if isinstance(user_id, int):
        value = user_id
    elif isinstance(user_id, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,19}\s*", user_id):
        value = int(user_id)
    else:
        shown = repr(user_id) if len(repr(user_id)) <= 40 else repr(user_id)[:40] + "..."
        raise UserIdError(f"user_id must be an integer (the legacy table's BIGINT), got {shown}")
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise UserIdError(f"user_id {value} is outside the BIGINT range")
    return value


def _describe_dsn(dsn: str) -> str:
    """Where a DSN points, without its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
    except Exception:
        return "the given PostgreSQL DSN"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"postgresql://{host}:{port}/{info.get('dbname') or ''}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class ExistingTable:
    """Summaries from an existing legacy events table, read-only (SPEC §3).

    The table has the legacy layout ``(id BIGINT, user_id BIGINT, type VARCHAR(32),
    metadata JSONB, PRIMARY KEY (id, user_id))``. Nothing is created or changed in the
    database: every statement runs in a read-only transaction of a session whose
    ``default_transaction_read_only`` is on, so even a mistake here could not write.

    The connection is opened on first use and kept; use ``close()`` or ``with``. One
    instance serves one thread at a time (it holds one connection).
    """

    def __init__(
        self,
        dsn: str,
        table: str = "events",
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        statement_timeout_ms: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.table = table
        self._parts = parse_table_name(table)
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: psycopg.Connection[Any] | None = None
        self._query: psycopg.sql.Composed | None = None

    def __enter__(self) -> ExistingTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            return self._conn
        # jit=off: without prepared statements every call would pay JIT compilation again
        # (~60 ms measured on the 1M-row table, more than the scan it was meant to speed up).
        options = "-c default_transaction_read_only=on -c jit=off"
        if self.statement_timeout_ms is not None:
            options += f" -c statement_timeout={int(self.statement_timeout_ms)}"
        try:
            # prepare_threshold=None: never prepare, so PostgreSQL always plans with the
            # actual user_id (a generic plan made heavy users ~1.75x slower, MEASURED.md).
            conn = psycopg.connect(
                self.dsn,
                prepare_threshold=None,
                connect_timeout=max(1, math.ceil(self.connect_timeout)),
                options=options,
                application_name="eventledger-summary",
                autocommit=True,
            )
            conn.read_only = True
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to {_describe_dsn(self.dsn)}: {_one_line(exc)}"
            ) from exc
        self._conn = conn
        return conn

    @contextmanager
    def _errors(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Driver errors become ``StoreError`` (a broken connection is dropped)."""
        import psycopg

        try:
            yield
        except psycopg.errors.UndefinedTable as exc:
            raise StoreError(
                f"table {self.table!r} does not exist in {_describe_dsn(self.dsn)}"
            ) from exc
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self.close()
            raise StoreError(f"summary query on {self.table!r} failed: {_one_line(exc)}") from exc

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor in an explicit read-only transaction (BEGIN READ ONLY)."""
        conn = self._connect()
        with self._errors(conn), conn.transaction(), conn.cursor() as cur:
            yield cur

    def fetch_user_activity_summary(self, user_id: int | str) -> dict[str, Any]:
        """``{"click", "view", "purchase", "total_value"}`` of one user, as the legacy code.

        One aggregate statement; nothing but one row comes back to Python, so the memory of
        this process does not grow with the user's events.
        """
        uid = parse_legacy_user_id(user_id)
        if self._query is None:
            self._query = existing_table_query(self.table)
        src, dst = _unicode_translation()
        params = {"user_id": uid, "ws_digits_from": src, "ws_digits_to": dst}
        conn = self._connect()
        # One statement, one round trip: in autocommit mode it is its own transaction,
        # read-only by the session's default_transaction_read_only.
        with self._errors(conn):
            row = conn.execute(self._query, params).fetchone()
        assert row is not None  # an aggregate without GROUP BY returns exactly one row
        clicks, views, purchases, scaled = row
        # Unscaling in Python: overflow gives inf as in the legacy sum; "+ 0.0" turns -0.0
        # into 0.0 as the legacy sum that starts at 0.0 does.
        total = (float(scaled) * _UNSCALE if scaled is not None else 0.0) + 0.0
        return {
            "click": int(clicks),
            "view": int(views),
            "purchase": int(purchases),
            "total_value": total,
        }


# -- verification of the maintained aggregate ------------------------------------------------
DEFAULT_REL_TOL = 1e-9
DEFAULT_ABS_TOL = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class Mismatch:
    """One difference between the maintained aggregate and a recount from the events."""

    user_id: str
    field: str
    maintained: Any
    recomputed: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "field": self.field,
            "maintained": self.maintained,
            "recomputed": self.recomputed,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    """What ``verify`` found: the users checked and every mismatch."""

    user_id: str | None
    users_checked: int
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "users_checked": self.users_checked,
            "ok": self.ok,
            "mismatches": [m.to_dict() for m in self.mismatches],
        }


@dataclass(slots=True)
class _Recount:
    counts: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    total_value: float = 0.0
    first_seen_at: int | None = None


def _close(a: float, b: float, rel_tol: float, abs_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def verify_store(
    store: Store,
    user_id: str | None = None,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> VerifyResult:
    """Recompute each user's counts, applied count, total value and first_seen_at from the
    stored events (grouped in SQL) and compare them with the maintained aggregate.

    ``total_value`` is compared with a tight tolerance: the maintained sum was added up
    chunk by chunk, the recount in the database's order, and float addition depends on order.
    """
    recount: defaultdict[str, _Recount] = defaultdict(_Recount)
    for uid, event_type, n, value, min_ts in store.recount_from_events(user_id):
        r = recount[uid]
        r.counts[event_type] = int(n)
        r.applied += int(n)
        r.total_value += float(value)
        if r.first_seen_at is None or int(min_ts) < r.first_seen_at:
            r.first_seen_at = int(min_ts)
    maintained_counts: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for uid, event_type, n in store.maintained_counts(user_id):
        if int(n) != 0:
            maintained_counts[uid][event_type] = int(n)
    users = {
        uid: (int(applied), float(total), None if first is None else int(first))
        for uid, applied, total, first in store.maintained_users(user_id)
    }
    mismatches: list[Mismatch] = []
    for uid in sorted(set(users) | set(recount) | set(maintained_counts)):
        r = recount.get(uid, _Recount())
        if uid not in users:
            mismatches.append(
                Mismatch(user_id=uid, field="user", maintained=None, recomputed="has events")
            )
            continue
        applied, total, first = users[uid]
        have = maintained_counts.get(uid, {})
        for event_type in sorted(set(have) | set(r.counts)):
            if have.get(event_type, 0) != r.counts.get(event_type, 0):
                mismatches.append(
                    Mismatch(
                        user_id=uid,
                        field=f"count.{event_type}",
                        maintained=have.get(event_type, 0),
                        recomputed=r.counts.get(event_type, 0),
                    )
                )
        if applied != r.applied:
            mismatches.append(
                Mismatch(
                    user_id=uid, field="applied_count", maintained=applied, recomputed=r.applied
                )
            )
        if not _close(total, r.total_value, rel_tol, abs_tol):
            mismatches.append(
                Mismatch(
                    user_id=uid,
                    field="total_value",
                    maintained=total,
                    recomputed=r.total_value,
                )
            )
        if first != r.first_seen_at:
            mismatches.append(
                Mismatch(
                    user_id=uid,
                    field="first_seen_at",
                    maintained=first,
                    recomputed=r.first_seen_at,
                )
            )
    return VerifyResult(user_id=user_id, users_checked=len(users), mismatches=mismatches)
