"""Existing-table mode (SPEC §3) against a real PostgreSQL legacy table.

Parity: for every generated user, :class:`ExistingTable` and the legacy oracle (the seed's
Python logic, reading the same rows through psycopg) give identical counts and a total
within the rounding that float addition in another order can cause.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventledger.errors import ConfigError, EventledgerError, StoreError
from eventledger.legacy import legacy_fetch_user_activity_summary, legacy_price
from eventledger.summary import ExistingTable, UserIdError

pytestmark = pytest.mark.postgres

TABLE = "legacy.events"
OVERFLOW_INT = 2**1024 - 2**970
LEGACY_DDL = (
    "CREATE TABLE {} (id BIGINT NOT NULL, user_id BIGINT NOT NULL, type VARCHAR(32) NOT NULL,"
    " metadata JSONB DEFAULT '{{}}'::jsonb, PRIMARY KEY (id, user_id))"
)
_ids = itertools.count(1)


@pytest.fixture
def legacy_url(pg_url: str) -> Iterator[str]:
    """A fresh database holding an empty legacy table ``legacy.events``."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA legacy")
        conn.execute(LEGACY_DDL.format("legacy.events"))
    yield pg_url


def insert_user(url: str, user_id: int, rows: Sequence[tuple[str, str | None]]) -> None:
    """Insert ``(type, metadata JSON text or None)`` rows for a user."""
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO legacy.events (id, user_id, type, metadata)"
            " VALUES (%s, %s, %s, %s::jsonb)",
            [(next(_ids), user_id, t, m) for t, m in rows],
        )


def legacy(url: str, user_id: int, table: str = TABLE) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return legacy_fetch_user_activity_summary(conn, user_id, table)


def magnitude(url: str, user_id: int) -> tuple[float, int]:
    """Sum of |price| the legacy code adds for the user, and how many prices it adds."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT metadata FROM legacy.events WHERE user_id = %s AND type = 'purchase'",
            (user_id,),
        ).fetchall()
    prices = [p for (m,) in rows if (p := legacy_price(m)) is not None]
    return math.fsum(abs(p) for p in prices if math.isfinite(p)), len(prices)


def assert_same(got: dict[str, Any], want: dict[str, Any], mag: float, n: int) -> None:
    """Identical counts; totals equal up to the reordering error of n float additions."""
    assert list(got) == ["click", "view", "purchase", "total_value"]
    assert {k: got[k] for k in ("click", "view", "purchase")} == {
        k: want[k] for k in ("click", "view", "purchase")
    }
    a, b = got["total_value"], want["total_value"]
    assert isinstance(a, float)
    if math.isnan(b) or math.isinf(b):
        assert (math.isnan(a) and math.isnan(b)) or a == b, (a, b)
    else:
        # Each of the n additions rounds by at most half an ulp of the running sum
        # (<= mag); values below 1e-290 count as 0 in SQL (documented).
        bound = n * sys.float_info.epsilon * mag + n * 1e-290
        assert abs(a - b) <= bound, (a, b, bound)


# -- explicit cases, one user each, compared exactly -------------------------------------
EXPLICIT_PRICES = [
    "12.5",
    "3",
    "-7.25",
    "0",
    "-0.0",
    "1e308",
    "1.7976931348623157e308",
    str(OVERFLOW_INT),  # an int past the float range: OverflowError in Python, nothing
    str(OVERFLOW_INT - 1),
    "1.5e400",  # PostgreSQL prints it as an integer: nothing, as in Python
    "1" + "0" * 400 + ".5",  # a decimal past the float range: float() gives inf
    "-" + "1" + "0" * 400 + ".5",
    "123456789012345678901234567890.123456789",
    "0.1",
    "0.30000000000000004",
    "1e-5",
    '"12.5"',
    '" 12.5 "',
    '"1e3"',
    '"1E+3"',
    '"-.5e-3"',
    '"5."',
    '".5"',
    '"-3"',
    '"+4"',
    '"1_000"',
    '"1_0.5_5"',
    '"1e1_0"',
    '"__1"',
    '"1__0"',
    '"1_"',
    '"1_.5"',
    '"inf"',
    '"-Infinity"',
    '"+INF"',
    '"nan"',
    '"-NaN"',
    '"infinityy"',
    '"1e400"',
    '"-1e400"',
    '"1e-400"',
    '"1e5000"',
    '"0e5000"',
    '"1.7976931348623157e308"',
    '"1.7976931348623159e308"',
    json.dumps(str(OVERFLOW_INT - 1)),
    json.dumps(str(OVERFLOW_INT)),
    '"\\u0661\\u0662.\\u0665"',  # Arabic-Indic digits
    '"\\uff11\\uff12"',  # full-width digits
    '"\\u00a07\\u2003"',  # Unicode white space around
    '"\\t8\\n"',
    '"\\u000b9\\f"',
    '"\\u001c5"',  # not white space for float(): nothing
    '"1 000"',
    '"0x10"',
    '"N/A"',
    '""',
    '"   "',
    '"12abc"',
    '"e5"',
    '"1e"',
    '"."',
    "null",
    "true",
    "false",
    "[]",
    "[12.5]",
    "{}",
    '{"amount": 12.5}',
]


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def test_explicit_prices_match_the_legacy_rule_exactly(legacy_url: str) -> None:
    users = {}
    for n, price in enumerate(EXPLICIT_PRICES):
        user = 10_000 + n
        users[user] = price
        insert_user(legacy_url, user, [("purchase", '{"price": ' + price + ', "x": [1, {}]}')])
    failures = []
    with ExistingTable(legacy_url, table=TABLE) as et:
        for user, price in users.items():
            want = legacy(legacy_url, user)
            got = et.fetch_user_activity_summary(user)
            assert got["purchase"] == want["purchase"] == 1
            if not _same_float(got["total_value"], want["total_value"]):
                failures.append((price, got["total_value"], want["total_value"]))
    assert failures == []


@pytest.mark.parametrize(
    "metadata",
    ["null", "[1, 2]", '"a string"', "42", '{"nested": {"price": 9}}', '{"price": {"v": 1}}'],
)
def test_metadata_without_a_usable_price(legacy_url: str, metadata: str) -> None:
    insert_user(legacy_url, 7, [("purchase", metadata), ("click", metadata), ("view", None)])
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(7)
    assert got == legacy(legacy_url, 7)
    assert got == {"click": 1, "view": 1, "purchase": 1, "total_value": 0.0}


def test_default_metadata_and_other_types(legacy_url: str) -> None:
    with psycopg.connect(legacy_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO legacy.events (id, user_id, type) VALUES"
            " (1, 5, 'click'), (2, 5, 'purchase'), (3, 5, 'signup'), (4, 5, 'Click'),"
            " (5, 5, 'view'), (1, 6, 'view')"
        )
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(5)
        assert et.fetch_user_activity_summary("6") == {
            "click": 0,
            "view": 1,
            "purchase": 0,
            "total_value": 0.0,
        }
    assert (
        got
        == legacy(legacy_url, 5)
        == {
            "click": 1,
            "view": 1,
            "purchase": 1,
            "total_value": 0.0,
        }
    )


def test_user_without_events_gets_zeros(legacy_url: str) -> None:
    insert_user(legacy_url, 1, [("click", "{}")])
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(999)
    assert (
        got
        == legacy(legacy_url, 999)
        == {
            "click": 0,
            "view": 0,
            "purchase": 0,
            "total_value": 0.0,
        }
    )
    assert isinstance(got["total_value"], float)


# -- generated users (hypothesis) ----------------------------------------------------------
# JSONB refuses NUL in strings; lone surrogates are not valid UTF-8.
chars = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))


def text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(chars, max_size=max_size)


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | text(max_size=8)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False)
UNICODE_DIGITS = str.maketrans(
    "0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"
)


@st.composite
def numeric_string(draw: st.DrawFn) -> str:
    value = draw(finite | st.integers(-(10**30), 10**30).map(float))
    text = draw(
        st.sampled_from(
            [repr(value), f"{value:e}", f"{value:.3f}", f"{value:.0f}", f"{value:.17g}"]
        )
    )
    if draw(st.booleans()) and text.lstrip("-").isdigit() and len(text) > 1:
        text = text[0] + "_" + text[1:] if text[1].isdigit() and text[0].isdigit() else text
    if draw(st.booleans()):
        text = text.translate(UNICODE_DIGITS)
    pad = draw(st.sampled_from(["", " ", "\t", "\u00a0", "\u3000"]))
    return pad + text + pad


price_value = st.one_of(
    finite,
    st.integers(-(10**30), 10**30),
    st.sampled_from([10**308, OVERFLOW_INT, OVERFLOW_INT - 1, 10**400, -(10**400)]),
    numeric_string(),
    st.sampled_from(["inf", "-inf", "Infinity", "nan", "NaN", "-nan", "1e400", "1e-400"]),
    st.sampled_from(["", " ", "N/A", "12abc", "0x10", "1__0", "_1", "None", "null", "€12"]),
    text(max_size=12),
    st.none(),
    st.booleans(),
    json_value,
)
MISSING = object()


@st.composite
def metadata_text(draw: st.DrawFn) -> str | None:
    shape = draw(st.sampled_from(["object", "object", "object", "object", "other", "null"]))
    if shape == "null":
        return None
    if shape == "other":
        return json.dumps(draw(json_value), allow_nan=False)
    meta = draw(st.dictionaries(text(max_size=6), json_value, max_size=4))
    meta.pop("price", None)
    price = draw(st.one_of(st.just(MISSING), price_value))
    if price is not MISSING:
        meta["price"] = price
    return json.dumps(meta, allow_nan=False)


event_type = st.sampled_from(["click", "view", "purchase", "purchase", "signup", "Purchase"])


def _overflow_free(rows: Sequence[tuple[str, str | None]]) -> bool:
    """Whether the legacy sum cannot overflow on the way (its result then depends on
    the order of the rows: a documented difference, tested below)."""
    total = 0.0
    for t, m in rows:
        if t == "purchase" and m is not None:
            p = legacy_price(json.loads(m))
            if p is not None and math.isfinite(p):
                total += abs(p)
    return math.isfinite(total)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(st.tuples(event_type, metadata_text()), max_size=25))
def test_parity_on_generated_users(legacy_url: str, rows: list[tuple[str, str | None]]) -> None:
    # Every example writes a new user into the same table, so examples do not interfere.
    if not _overflow_free(rows):
        rows = [(t, m) for t, m in rows if t != "purchase"]
    user = next(_ids) + 1_000_000
    insert_user(legacy_url, user, rows)
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(user)
    mag, n = magnitude(legacy_url, user)
    assert_same(got, legacy(legacy_url, user), mag, n)


PRICE_PIECES = [*"0123456789", *"0123456789", "_", ".", "e", "E", "+", "-", " ", "\t", "inf",
                "nan", "Infinity", "\u0663", "\uff15", "\u00a0", "\u2003", "\x1f", "x", "0x",
                "1e400", "1e-400", "1_0"]  # fmt: skip


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    prices=st.lists(
        st.lists(st.sampled_from(PRICE_PIECES), min_size=1, max_size=8).map("".join),
        min_size=1,
        max_size=40,
    )
)
def test_price_strings_match_python_float_exactly(legacy_url: str, prices: list[str]) -> None:
    """Strings near Python's float() grammar (signs, underscores, exponents, Unicode digits
    and spaces, inf/nan), one user each, compared exactly."""
    users = {}
    for price in prices:
        user = next(_ids) + 2_000_000
        users[user] = price
        insert_user(legacy_url, user, [("purchase", json.dumps({"price": price}))])
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = {u: et.fetch_user_activity_summary(u)["total_value"] for u in users}
    with psycopg.connect(legacy_url) as conn:
        for user, price in users.items():
            want = legacy_fetch_user_activity_summary(conn, user, TABLE)["total_value"]
            assert _same_float(got[user], want), (price, got[user], want)


def test_parity_on_a_user_with_many_mixed_events(legacy_url: str) -> None:
    prices = ['"12.50"', "3", '"N/A"', "null", "7.25", '""', '"1_000"', "true", "[1]", "0.1"]
    rows = []
    for i in range(3000):
        t = ("click", "view", "purchase", "purchase", "other")[i % 5]
        rows.append((t, '{"price": ' + prices[i % len(prices)] + ', "cart": {"items": [1]}}'))
    insert_user(legacy_url, 42, rows)
    insert_user(legacy_url, 43, rows[:10])
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(42)
    mag, n = magnitude(legacy_url, 42)
    assert_same(got, legacy(legacy_url, 42), mag, n)
    assert got["click"] == 600 and got["purchase"] == 1200


# -- documented differences (cases SQL cannot match exactly) --------------------------------
def test_documented_difference_tiny_values_count_as_zero(legacy_url: str) -> None:
    insert_user(legacy_url, 1, [("purchase", '{"price": "1e-300"}')])
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(1)["total_value"]
    assert legacy(legacy_url, 1)["total_value"] == 1e-300
    assert got == 0.0  # off by less than 1e-290


def test_documented_difference_very_long_price_strings(legacy_url: str) -> None:
    insert_user(legacy_url, 1, [("purchase", json.dumps({"price": "1" * 10_001}))])
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(1)["total_value"]
    assert legacy(legacy_url, 1)["total_value"] == math.inf
    assert got == 0.0  # strings over 10,000 characters add nothing in SQL


def test_documented_difference_overflow_on_the_way(legacy_url: str) -> None:
    # Python adds in row order and overflows to inf after the second row; SQL sums without
    # intermediate overflow and gets the float of the true total. Python's own result
    # would change with the row order (1e308 - 1e308 + 1e308 is finite).
    insert_user(
        legacy_url,
        1,
        [("purchase", '{"price": 1e308}'), ("purchase", '{"price": 1e308}')]
        + [("purchase", '{"price": -1e308}')],
    )
    with ExistingTable(legacy_url, table=TABLE) as et:
        got = et.fetch_user_activity_summary(1)["total_value"]
    assert legacy(legacy_url, 1)["total_value"] == math.inf
    assert got == 1e308


def test_documented_difference_integers_over_4300_digits(legacy_url: str) -> None:
    # Python refuses to parse such an integer: the legacy code itself fails on this row.
    insert_user(legacy_url, 1, [("purchase", '{"price": 1' + "0" * 4400 + "}")])
    with pytest.raises(ValueError, match="4300"):
        legacy(legacy_url, 1)
    with ExistingTable(legacy_url, table=TABLE) as et:
        assert et.fetch_user_activity_summary(1) == {
            "click": 0,
            "view": 0,
            "purchase": 1,
            "total_value": 0.0,
        }


def test_overflowing_totals_are_inf_not_an_error(legacy_url: str) -> None:
    insert_user(legacy_url, 1, [("purchase", '{"price": 1e308}')] * 3)
    insert_user(
        legacy_url, 2, [("purchase", '{"price": "inf"}'), ("purchase", '{"price": "-inf"}')]
    )
    with ExistingTable(legacy_url, table=TABLE) as et:
        assert et.fetch_user_activity_summary(1)["total_value"] == math.inf
        assert math.isnan(et.fetch_user_activity_summary(2)["total_value"])
    assert legacy(legacy_url, 1)["total_value"] == math.inf
    assert math.isnan(legacy(legacy_url, 2)["total_value"])


# -- read-only, no DDL -------------------------------------------------------------------------
def _catalog_snapshot(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return {
            "columns": conn.execute(
                "SELECT column_name, data_type, character_maximum_length, is_nullable,"
                " column_default FROM information_schema.columns"
                " WHERE table_schema = 'legacy' AND table_name = 'events' ORDER BY 1"
            ).fetchall(),
            "indexes": conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'legacy' ORDER BY 1"
            ).fetchall(),
            "relations": conn.execute(
                "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
            ).fetchall(),
            "temp": conn.execute(
                "SELECT count(*) FROM pg_class WHERE relpersistence = 't'"
            ).fetchone(),
        }


def test_no_ddl_no_index_no_temp_table(legacy_url: str) -> None:
    insert_user(legacy_url, 1, [("purchase", '{"price": "12.5"}'), ("click", "{}")])
    before = _catalog_snapshot(legacy_url)
    assert ("legacy", "events_pkey") in [(r[0], r[1]) for r in before["relations"]]
    with ExistingTable(legacy_url, table=TABLE) as et:
        for user in (1, 2, 1):
            et.fetch_user_activity_summary(user)
    assert _catalog_snapshot(legacy_url) == before


def test_session_is_read_only_and_never_prepares(legacy_url: str) -> None:
    insert_user(legacy_url, 1, [("purchase", '{"price": "12.5"}')])
    with ExistingTable(legacy_url, table=TABLE) as et:
        for _ in range(8):  # psycopg would prepare after 5 executions by default
            assert et.fetch_user_activity_summary(1)["total_value"] == 12.5
        with et.transaction() as cur:
            assert cur.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            assert cur.execute("SHOW transaction_read_only").fetchone() == ("on",)
            assert cur.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
            # JIT would compile the unprepared statement again on every call
            assert cur.execute("SHOW jit").fetchone() == ("off",)
        with pytest.raises(StoreError, match="read-only") as info:
            with et.transaction() as cur:
                cur.execute("INSERT INTO legacy.events (id, user_id, type) VALUES (99, 1, 'x')")
        assert isinstance(info.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
        with pytest.raises(StoreError, match="read-only"):
            with et.transaction() as cur:
                cur.execute("CREATE INDEX ON legacy.events (user_id)")
        # Outside an explicit transaction (autocommit, as the summary runs) the session's
        # default_transaction_read_only refuses writes too.
        session = et._connect()
        assert session.autocommit
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.execute("CREATE TEMP TABLE t (x int)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.execute("DELETE FROM legacy.events")
        # The session stays usable after a refused write.
        assert et.fetch_user_activity_summary(1)["purchase"] == 1
    assert legacy(legacy_url, 1)["purchase"] == 1


# -- input checking and error wrapping ---------------------------------------------------------
@pytest.mark.parametrize("bad", ["abc", "", "1.5", 1.5, True, None, 2**63, "-9223372036854775809"])
def test_invalid_user_id_is_a_clear_error(legacy_url: str, bad: Any) -> None:
    with ExistingTable(legacy_url, table=TABLE) as et:
        with pytest.raises(UserIdError, match="user_id"):
            et.fetch_user_activity_summary(bad)


def test_user_id_as_decimal_string(legacy_url: str) -> None:
    insert_user(legacy_url, -5, [("click", "{}")])
    with ExistingTable(legacy_url, table=TABLE) as et:
        assert et.fetch_user_activity_summary(" -5 ")["click"] == 1
        assert et.fetch_user_activity_summary(2**63 - 1)["click"] == 0


@pytest.mark.parametrize("bad", ["a.b.c", "", ".events", "x" * 64])
def test_invalid_table_name(bad: str) -> None:
    with pytest.raises(ConfigError, match="table name"):
        ExistingTable("postgresql://127.0.0.1/none", table=bad)


def test_table_names_are_quoted_not_pasted(legacy_url: str) -> None:
    odd = 'ev"ents; DROP TABLE legacy_x; --'
    with psycopg.connect(legacy_url, autocommit=True) as conn:
        conn.execute(LEGACY_DDL.format(psycopg.sql.Identifier(odd).as_string(conn)))
        conn.execute(
            psycopg.sql.SQL("INSERT INTO {} VALUES (1, 1, 'view', '{{}}')").format(
                psycopg.sql.Identifier(odd)
            )
        )
    with ExistingTable(legacy_url, table=odd) as et:
        assert et.fetch_user_activity_summary(1)["view"] == 1
    with ExistingTable(legacy_url, table="public.legacy_missing") as et:
        with pytest.raises(StoreError, match="does not exist"):
            et.fetch_user_activity_summary(1)
    assert _catalog_snapshot(legacy_url)["columns"]  # legacy.events is still there


def test_driver_errors_are_wrapped(legacy_url: str) -> None:
    with psycopg.connect(legacy_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE legacy.wrong (id BIGINT, user_id BIGINT)")
    with ExistingTable(legacy_url, table="legacy.wrong") as et:
        with pytest.raises(StoreError, match="failed"):
            et.fetch_user_activity_summary(1)
    with ExistingTable("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2) as et:
        with pytest.raises(StoreError, match="cannot connect") as info:
            et.fetch_user_activity_summary(1)
    assert isinstance(info.value, EventledgerError)
    assert "\n" not in str(info.value)
