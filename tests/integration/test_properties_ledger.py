"""Invariants of SPEC §2 on a real SQLite store, over generated messy batches (hypothesis).

Each example gets a fresh database file. The batches mix valid events, duplicates, corrected
retries, wrong types, malformed raw lines, odd user ids and timestamps around received_at.
"""

from __future__ import annotations

import copy
import json
import math
import sqlite3
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eventledger import Ledger

RECEIVED_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RA_MS = int(RECEIVED_AT.timestamp() * 1000)
SKEW_MS = 5 * 60 * 1000
MAX_EPOCH_MS = 253_402_300_799_999

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the messy event strategy -----------------------------------------------------------------
event_ids = st.one_of(
    st.sampled_from([f"e{i}" for i in range(6)]),
    st.sampled_from(["", "  ", "e\x00", 5, None, ["e1"]]),
)
user_ids = st.sampled_from(
    ["u1", "u2", " u1 ", "u3", 7, "7", 10**30, "", "   ", None, 1.5, True, "x" * 129, "u\x00"]
)
types = st.sampled_from(["click", "view", "purchase", "purchase", "signup", "Bad", "", 3, None])
offsets_ms = st.integers(min_value=-3 * 3600 * 1000, max_value=10 * 60 * 1000)
tz_minutes = st.sampled_from([0, 60, -300, 330])


def _rfc3339(ms: int, tz: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(timezone(timedelta(minutes=tz)))
    return dt.isoformat(timespec="milliseconds")


valid_timestamps = st.one_of(
    st.builds(lambda off, tz: _rfc3339(RA_MS + off, tz), offsets_ms, tz_minutes),
    st.builds(lambda off: RA_MS + off, offsets_ms),
)
timestamps = st.one_of(
    valid_timestamps,
    st.sampled_from(["yesterday", "2026-01-01T11:00:00", None, 1.5e12, True, -5]),
)
prices = st.one_of(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["19.99", "0", "N/A", "", -1, None, float("nan"), float("inf"), [1]]),
)
metadatas = st.one_of(
    st.builds(lambda p: {"price": p}, prices),
    st.just({}),
    st.just({"page": "/x", "tags": ["a", {"b": 1}]}),
    st.sampled_from([[1], "meta", 3, {"k": "\x00"}]),
)
sequences = st.sampled_from([1, 2, 42, 0, -1, "1", 1.0])

event_dicts = st.fixed_dictionaries(
    {},
    optional={
        "event_id": event_ids,
        "user_id": user_ids,
        "type": types,
        "timestamp": timestamps,
        "metadata": metadatas,
        "sequence": sequences,
    },
)
# Mostly well-formed events so that applies, duplicates and retries happen often.
good_dicts = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from([f"e{i}" for i in range(6)]),
        "user_id": st.sampled_from(["u1", "u2", 7, " u1 "]),
        "type": st.sampled_from(["click", "view", "purchase"]),
        "timestamp": valid_timestamps,
        "metadata": st.builds(lambda p: {"price": p}, prices),
    }
)


def _as_line(event: dict[str, Any]) -> Any:
    try:
        return json.dumps(event, allow_nan=False).encode()
    except ValueError:
        return event  # NaN price: stays a dict


items = st.one_of(
    good_dicts,
    good_dicts,
    event_dicts,
    good_dicts.map(_as_line),
    event_dicts.map(_as_line),
    st.sampled_from([b"{not json", b"[1, 2]", b"null", b'"s"', b"42", b"", b"\xff\xfe"]),
    st.sampled_from([None, 3, ["e1"], "true"]),
)
batches = st.lists(items, min_size=1, max_size=30)
chunk_sizes = st.sampled_from([1, 3, 2000])


@contextmanager
def fresh_ledger(chunk_size: int = 2000) -> Iterator[tuple[Ledger, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eventledger.db"
        ledger = Ledger(f"sqlite:///{path}", chunk_size=chunk_size)
        try:
            yield ledger, path
        finally:
            ledger.close()


# -- an independent oracle -----------------------------------------------------------------------
def _as_dict(item: Any) -> dict[str, Any] | None:
    if isinstance(item, dict):
        return item
    if isinstance(item, (bytes, str)):
        try:
            value = json.loads(item)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _ts_ms(value: Any) -> float | None:
    """The instant of a timestamp in ms, parsed independently of eventledger."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value) if 0 <= value <= MAX_EPOCH_MS else None
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None or len(value) < 20:
            return None
        return dt.timestamp() * 1000
    return None


def _candidate_ms(event: dict[str, Any], received_ms: int) -> float:
    ts = _ts_ms(event.get("timestamp"))
    return ts if ts is not None and ts <= received_ms + SKEW_MS else float(received_ms)


def _ms(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp() * 1000


# -- properties ----------------------------------------------------------------------------------
@SETTINGS
@given(batch=batches, chunk_size=chunk_sizes)
def test_report_balances_and_counts_equal_outcomes(batch: list[Any], chunk_size: int) -> None:
    with fresh_ledger(chunk_size) as (ledger, _):
        report = ledger.process(batch, received_at=RECEIVED_AT)
        stored = ledger.report(report.batch_id)
    data = report.to_dict()
    outcomes = data["outcomes"]
    assert data["balanced"] is True
    assert data["total"] == len(batch) == len(outcomes)
    assert [o["index"] for o in outcomes] == list(range(len(batch)))
    kinds = Counter(o["outcome"] for o in outcomes)
    for kind in ("applied", "duplicate", "rejected"):
        event(f"has {kind}: {kinds[kind] > 0}")
    assert data["applied"] == kinds["applied"]
    assert data["duplicates"] == kinds["duplicate"]
    assert data["rejected"] == kinds["rejected"] == sum(data["rejected_by_reason"].values())
    by_reason = Counter(o["reason"] for o in outcomes if o["outcome"] == "rejected")
    assert data["rejected_by_reason"] == dict(by_reason)
    assert all((o["reason"] is None) == (o["outcome"] != "rejected") for o in outcomes)
    assert stored == data


@SETTINGS
@given(batch=batches)
def test_input_is_never_mutated(batch: list[Any]) -> None:
    before = copy.deepcopy(batch)
    with fresh_ledger(3) as (ledger, _):
        ledger.process(batch, received_at=RECEIVED_AT)
    assert _same(batch, before)


def _same(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN (a NaN price in a dict)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


@SETTINGS
@given(batch=batches, chunk_size=chunk_sizes)
def test_same_batch_twice_applies_nothing_the_second_time(
    batch: list[Any], chunk_size: int
) -> None:
    with fresh_ledger(chunk_size) as (ledger, path):
        first = ledger.process(batch, received_at=RECEIVED_AT).to_dict()
        state = _db_state(path)
        # Same received_at: a later one could move a timestamp_in_future within the skew.
        second = ledger.process(batch, received_at=RECEIVED_AT).to_dict()
        assert _db_state(path) == state  # no effect applied again
    applied_ids = {o["event_id"] for o in first["outcomes"] if o["outcome"] == "applied"}
    assert second["applied"] == 0
    for o1, o2 in zip(first["outcomes"], second["outcomes"], strict=True):
        if o1["event_id"] in applied_ids:
            assert o2["outcome"] == "duplicate"
        else:
            assert (o2["outcome"], o2["reason"]) == (o1["outcome"], o1["reason"])
            assert o1["outcome"] == "rejected"


def _db_state(path: Path) -> tuple[Any, ...]:
    """What applying changes: events, counts and aggregates (not last_seen_at)."""
    conn = sqlite3.connect(path)
    try:
        return (
            conn.execute(
                "SELECT event_id, user_id, type, user_seq FROM events ORDER BY 1"
            ).fetchall(),
            conn.execute("SELECT * FROM user_counts ORDER BY 1, 2").fetchall(),
            conn.execute(
                "SELECT user_id, first_seen_at, applied_count, total_value FROM users ORDER BY 1"
            ).fetchall(),
        )
    finally:
        conn.close()


@SETTINGS
@given(
    batch_list=st.lists(st.tuples(batches, st.integers(-120, 120)), min_size=2, max_size=4),
    chunk_size=chunk_sizes,
)
def test_last_seen_never_decreases_and_applied_once_stays_applied(
    batch_list: list[tuple[list[Any], int]], chunk_size: int
) -> None:
    applied_ever: set[str] = set()
    last: dict[str, float] = {}
    with fresh_ledger(chunk_size) as (ledger, path):
        for batch, minutes in batch_list:
            report = ledger.process(batch, received_at=RECEIVED_AT + timedelta(minutes=minutes))
            for o in report.to_dict()["outcomes"]:
                if o["outcome"] == "applied":
                    assert o["event_id"] not in applied_ever  # never applied twice
                    applied_ever.add(o["event_id"])
            conn = sqlite3.connect(path)
            rows = conn.execute("SELECT user_id, last_seen_at FROM users").fetchall()
            n_events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            conn.close()
            for user_id, seen in rows:
                assert seen >= last.get(user_id, -math.inf)
                last[user_id] = seen
            assert set(last) == {r[0] for r in rows}  # no user state disappears
            assert n_events == len(applied_ever)


@SETTINGS
@given(
    batch_list=st.lists(st.tuples(batches, st.integers(-120, 120)), min_size=1, max_size=3),
    chunk_size=chunk_sizes,
)
def test_per_user_aggregate_equals_oracle(
    batch_list: list[tuple[list[Any], int]], chunk_size: int
) -> None:
    counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
    value: defaultdict[str, float] = defaultdict(float)
    first_seen: dict[str, float] = {}
    last_seen: dict[str, float] = {}
    with fresh_ledger(chunk_size) as (ledger, _):
        for batch, minutes in batch_list:
            received_at = RECEIVED_AT + timedelta(minutes=minutes)
            received_ms = int(received_at.timestamp() * 1000)
            report = ledger.process(batch, received_at=received_at)
            for o in report.to_dict()["outcomes"]:
                event = _as_dict(batch[o["index"]])
                if o["user_id"] is None:
                    continue
                assert event is not None
                user = o["user_id"]
                cand = _candidate_ms(event, received_ms)
                last_seen[user] = max(last_seen.get(user, -math.inf), cand)
                if o["outcome"] != "applied":
                    continue
                counts[user][event["type"]] += 1
                if event["type"] == "purchase":
                    value[user] += float(event["metadata"]["price"])
                ts = _ts_ms(event["timestamp"])
                assert ts is not None
                first_seen[user] = min(first_seen.get(user, math.inf), ts)
        users = set(last_seen)
        for user in users:
            activity = ledger.activity(user)
            assert activity is not None, user
            assert activity["counts"] == dict(counts[user])
            assert activity["applied"] == sum(counts[user].values())
            assert math.isclose(activity["total_value"], value[user], rel_tol=1e-9, abs_tol=1e-6)
            assert _ms(activity["last_seen_at"]) == last_seen[user]
            assert _ms(activity["first_seen_at"]) == first_seen.get(user)
            summary = ledger.fetch_user_activity_summary(user)
            assert summary["click"] == counts[user]["click"]
            assert summary["view"] == counts[user]["view"]
            assert summary["purchase"] == counts[user]["purchase"]
        # No user state for anything else (blank, invalid, missing user ids).
        for other in ("", "x" * 129, "1.5", "True", "None"):
            assert ledger.activity(other) is None
