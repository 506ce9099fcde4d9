"""The store contract: everything a store promises, on SQLite and on PostgreSQL alike.

Every test here runs once per backend through the ``store_url`` fixture, against a real
SQLite file and a real PostgreSQL database, through the public ``Ledger`` API; only the
checks of stored rows (sequences, deliveries) read the database directly.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from eventledger import Ledger
from eventledger.errors import EventledgerError, StoreError
from eventledger.store import open_store
from eventledger.store.base import load_migrations
from eventledger.timeutil import datetime_to_us, format_us

RECEIVED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ts(minutes: int) -> str:
    """An RFC 3339 timestamp ``minutes`` after 2025-12-31T00:00Z (before RECEIVED)."""
    return (datetime(2025, 12, 31, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


def ev(event_id: str, user: str | int, kind: str = "click", minute: int = 0, **extra: Any) -> dict:
    return {"event_id": event_id, "user_id": user, "type": kind, "timestamp": ts(minute), **extra}


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run a read-only query on either backend (test values only; no parameters)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url) as pg:
        return [tuple(r) for r in pg.execute(sql).fetchall()]


def test_each_event_id_is_applied_exactly_once(store_url: str) -> None:
    with Ledger(store_url, chunk_size=3) as ledger:
        first = ledger.process(
            [ev("a", "u1"), ev("b", "u1"), ev("a", "u1"), ev("c", "u2"), ev("b", "u1")],
            received_at=RECEIVED,
        )
        second = ledger.process(
            [ev("c", "u2"), ev("d", "u2"), ev("a", "u1", "view")], received_at=RECEIVED
        )
        assert (first.applied, first.duplicates, first.rejected) == (3, 2, 0)
        assert (second.applied, second.duplicates, second.rejected) == (1, 2, 0)
        assert [o.outcome.value for o in second.outcomes] == ["duplicate", "applied", "duplicate"]
        # The same id with other content is still a duplicate, and says so.
        assert second.outcomes[2].detail == "content differs from the applied version"
        assert second.outcomes[0].detail is None
        assert ledger.fetch_user_activity_summary("u1") == {
            "click": 2,
            "view": 0,
            "purchase": 0,
            "total_value": 0.0,
        }
        assert ledger.activity("u2")["applied"] == 2  # type: ignore[index]
    assert rows(store_url, "SELECT count(*) FROM events") == [(4,)]


def test_a_rejected_event_id_does_not_block_its_corrected_retry(store_url: str) -> None:
    with Ledger(store_url) as ledger:
        bad = ledger.process([ev("r1", "u1", "Bad Type")], received_at=RECEIVED)
        good = ledger.process([ev("r1", "u1", "purchase", metadata={"price": "9.50"})])
        again = ledger.process([ev("r1", "u1", "purchase", metadata={"price": "9.50"})])
        assert bad.rejected_by_reason == {"invalid_type": 1}
        assert good.applied == 1
        assert again.duplicates == 1 and again.outcomes[0].detail is None
        assert ledger.fetch_user_activity_summary("u1") == {
            "click": 0,
            "view": 0,
            "purchase": 1,
            "total_value": 9.5,
        }


def test_last_seen_at_is_the_maximum_over_every_fate(store_url: str) -> None:
    with Ledger(store_url, chunk_size=2) as ledger:
        ledger.process(
            [
                ev("x1", "u1", minute=50),
                ev("x2", "u1", minute=10),  # out of order: does not move last_seen back
                ev("x3", "u1", "Bad Type", minute=70),  # rejected, still counts as seen
                {"event_id": "x4", "user_id": "  ", "type": "click", "timestamp": ts(90)},
                {"event_id": "x5", "user_id": None, "type": "click", "timestamp": ts(95)},
            ],
            received_at=RECEIVED,
        )
        ledger.process([ev("x1", "u1", minute=80)], received_at=RECEIVED)  # a duplicate
        activity = ledger.activity("u1")
        assert activity is not None
        assert activity["last_seen_at"] == format_us(datetime_to_us(datetime.fromisoformat(ts(80))))
        assert activity["first_seen_at"] == format_us(
            datetime_to_us(datetime.fromisoformat(ts(10)))
        )
        # A timestamp beyond the allowed skew counts as received_at, never as itself.
        future = (RECEIVED + timedelta(days=2)).isoformat()
        ledger.process(
            [{"event_id": "f1", "user_id": "u3", "type": "click", "timestamp": future}],
            received_at=RECEIVED,
        )
        u3 = ledger.activity("u3")
        assert u3 is not None and u3["last_seen_at"] == format_us(datetime_to_us(RECEIVED))
        assert u3["first_seen_at"] is None and u3["applied"] == 0
        assert ledger.activity("") is None
    assert rows(store_url, "SELECT user_id FROM users ORDER BY user_id") == [("u1",), ("u3",)]


def test_user_seq_counts_1_to_n_in_apply_order(store_url: str) -> None:
    with Ledger(store_url, chunk_size=4) as ledger:
        ledger.process([ev(f"s{i}", "u1" if i % 3 else "u2", minute=i) for i in range(10)])
        ledger.process([ev("s3", "u1"), ev("t1", "u1"), ev("t2", "u2", "Bad Type"), ev("t3", "u2")])
    got = rows(
        store_url, "SELECT user_id, event_id, user_seq FROM events ORDER BY user_id, user_seq"
    )
    u1 = [r for r in got if r[0] == "u1"]
    u2 = [r for r in got if r[0] == "u2"]
    assert [r[2] for r in u1] == list(range(1, 8))
    assert [r[1] for r in u1] == ["s1", "s2", "s4", "s5", "s7", "s8", "t1"]
    assert [r[2] for r in u2] == [1, 2, 3, 4, 5]
    assert [r[1] for r in u2] == ["s0", "s3", "s6", "s9", "t3"]


def test_counts_total_value_and_first_seen(store_url: str) -> None:
    events = [
        ev("p1", 42, "purchase", 5, metadata={"price": 10.25}),
        ev("p2", "42", "purchase", 3, metadata={"price": "0.75", "items": [1, {"a": None}]}),
        ev("p3", "42", "view", 9),
        ev("p4", "42", "signup", 1),
        ev("p5", "42", "purchase", 2, metadata={"price": "N/A"}),  # invalid_price
    ]
    with Ledger(store_url) as ledger:
        report = ledger.process(events, received_at=RECEIVED)
        assert report.rejected_by_reason == {"invalid_price": 1}
        activity = ledger.activity(42)
    assert activity == {
        "user_id": "42",
        "last_seen_at": format_us(datetime_to_us(datetime.fromisoformat(ts(9)))),
        "first_seen_at": format_us(datetime_to_us(datetime.fromisoformat(ts(1)))),
        "applied": 4,
        "counts": {"purchase": 2, "signup": 1, "view": 1},
        "total_value": 11.0,
    }


def test_reports_are_stored_and_rebuilt_in_input_order(store_url: str) -> None:
    events: list[Any] = [
        ev("a", "u1"),
        "{not json",
        ev("b", "u2", "Bad"),
        [1, 2],
        ev("a", "u1", "view"),
        {"user_id": "u3", "type": "click", "timestamp": ts(1)},
        ev("c", "u3", "purchase"),
        ev("d", "u1", "view"),
    ]
    with Ledger(store_url, chunk_size=3) as ledger:
        report = ledger.process(events, received_at=RECEIVED)
        stored = ledger.report(report.batch_id)
        with pytest.raises(EventledgerError):
            ledger.report("no-such-batch")
    expected = report.to_dict()
    assert stored == expected
    assert [o["index"] for o in stored["outcomes"]] == list(range(8))
    assert [o["outcome"] for o in stored["outcomes"]] == [
        "applied",
        "rejected",
        "rejected",
        "rejected",
        "duplicate",
        "rejected",
        "rejected",
        "applied",
    ]
    assert stored["rejected_by_reason"] == {
        "invalid_price": 1,
        "invalid_type": 1,
        "malformed_json": 1,
        "missing_event_id": 1,
        "not_an_object": 1,
    }
    assert list(stored["rejected_by_reason"]) == sorted(stored["rejected_by_reason"])
    assert stored["balanced"] is True and stored["total"] == 8


def test_endpoints_crud(store_url: str) -> None:
    with Ledger(store_url) as ledger:
        one = ledger.add_endpoint("http://127.0.0.1:9/a", event_types=["click"], endpoint_id="e1")
        two = ledger.add_endpoint("http://127.0.0.1:9/b", secret=None, endpoint_id="e2")
        store = ledger.store
        listed = store.list_endpoints()
        assert [e.endpoint_id for e in listed] == ["e1", "e2"]
        assert listed[0] == one and listed[1].event_types is None
        assert listed[1].secret == two.secret and two.secret.startswith("whsec_")  # type: ignore[union-attr]
        assert store.set_endpoint_enabled("e1", False) is True
        assert store.set_endpoint_enabled("nope", False) is False
        assert [e.enabled for e in store.list_endpoints()] == [False, True]
        with pytest.raises(EventledgerError):
            ledger.add_endpoint("http://127.0.0.1:9/c", endpoint_id="e2")
        assert store.remove_endpoint("e1") is True
        assert store.remove_endpoint("e1") is False
        assert [e.endpoint_id for e in store.list_endpoints()] == ["e2"]


def test_deliveries_are_created_with_the_events_gap_free_per_endpoint_and_user(
    store_url: str,
) -> None:
    with Ledger(store_url, chunk_size=3) as ledger:
        ledger.add_endpoint("http://127.0.0.1:9/all", endpoint_id="all")
        ledger.add_endpoint("http://127.0.0.1:9/clicks", event_types=["click"], endpoint_id="clk")
        ledger.add_endpoint("http://127.0.0.1:9/off", endpoint_id="off", enabled=False)
        ledger.process(
            [
                ev("d1", "u1", "click", 1),
                ev("d2", "u1", "view", 2),
                ev("d3", "u2", "click", 3),
                ev("d1", "u1", "click", 1),  # duplicate: no second delivery
                ev("d4", "u1", "click", 4),
                ev("d5", "u1", "Bad"),  # rejected: no delivery
            ]
        )
        ledger.process([ev("d6", "u1", "click", 6), ev("d7", "u2", "view", 7)])
    got = rows(
        store_url,
        "SELECT delivery_id, webhook_id, entity_key, sequence, endpoint_id, target_url, state,"
        " payload FROM deliveries ORDER BY entity_key, sequence",
    )
    keys = {}
    for r in got:
        keys.setdefault(r[2], []).append((r[1], r[3]))
        assert r[0] == f"{r[4]}/{r[1]}" and r[6] == "PENDING"
        assert r[5] == f"http://127.0.0.1:9/{'all' if r[4] == 'all' else 'clicks'}"
        body = orjson.loads(bytes(r[7]))
        assert body["event_id"] == r[1] and body["user_id"] == r[2].split("/")[1]
    assert keys == {
        "all/u1": [("d1", 1), ("d2", 2), ("d4", 3), ("d6", 4)],
        "all/u2": [("d3", 1), ("d7", 2)],
        "clk/u1": [("d1", 1), ("d4", 2), ("d6", 3)],
        "clk/u2": [("d3", 1)],
    }
    assert rows(store_url, "SELECT count(*) FROM events") == [(6,)]


def test_integers_past_64_bits_in_metadata_are_stored_and_sent_exactly(store_url: str) -> None:
    big = 123456789012345678901234567890
    line = (
        f'{{"event_id": "big", "user_id": "u1", "type": "view", "timestamp": "{ts(1)}",'
        f' "metadata": {{"n": {big}}}}}'
    )
    with Ledger(store_url) as ledger:
        ledger.add_endpoint("http://127.0.0.1:9/hook", endpoint_id="hook")
        assert ledger.process([line]).applied == 1
    (text,) = rows(store_url, "SELECT CAST(metadata AS TEXT) FROM events WHERE event_id = 'big'")[0]
    assert str(big) in text and "e+" not in text
    (payload,) = rows(store_url, "SELECT payload FROM deliveries")[0]
    assert b'"n":%d' % big in bytes(payload)


def test_removing_an_endpoint_skips_its_unsent_deliveries_only(store_url: str) -> None:
    with Ledger(store_url) as ledger:
        ledger.add_endpoint("http://127.0.0.1:9/gone", endpoint_id="gone")
        ledger.add_endpoint("http://127.0.0.1:9/kept", endpoint_id="kept")
        ledger.process([ev("r1", "u1"), ev("r2", "u1"), ev("r3", "u2")])
        assert ledger.store.remove_endpoint("gone") is True
    got = rows(
        store_url,
        "SELECT endpoint_id, state, last_error FROM deliveries ORDER BY endpoint_id, delivery_id",
    )
    assert got == [("gone", "SKIPPED", "endpoint removed")] * 3 + [("kept", "PENDING", None)] * 3


def test_verify_primitives_agree_with_the_aggregate(store_url: str) -> None:
    events = [
        ev(f"v{i}", f"u{i % 5}", ("click", "view", "purchase")[i % 3], i, metadata={"price": i})
        for i in range(60)
    ]
    with Ledger(store_url, chunk_size=7) as ledger:
        ledger.process(events)
        ledger.process(events[::2])
        store = ledger.store
        recount = store.recount_from_events(None)
        users = store.maintained_users(None)
        counts = store.maintained_counts(None)
        assert [(u, t, n) for u, t, n, _, _ in recount] == counts
        by_user: dict[str, list[Any]] = {}
        for user, _, n, value, first in recount:
            entry = by_user.setdefault(user, [0, 0.0, None])
            entry[0] += n
            entry[1] += value
            entry[2] = first if entry[2] is None else min(entry[2], first)
        assert [u for u, *_ in users] == sorted(by_user) == [f"u{i}" for i in range(5)]
        for user, applied, total_value, first_seen in users:
            assert applied == by_user[user][0]
            assert math.isclose(total_value, by_user[user][1])
            assert first_seen == by_user[user][2]
        expected_value = sum(i for i in range(60) if i % 3 == 2 and i % 5 == 2)
        assert math.isclose(store.maintained_users("u2")[0][2], expected_value)
        assert store.maintained_counts("u2") == [c for c in counts if c[0] == "u2"]
        assert store.recount_from_events("nobody") == []


def test_schema_version_and_upgrade_are_idempotent(store_url: str) -> None:
    latest = load_migrations("postgres" if store_url.startswith("postgres") else "sqlite")[-1][0]
    with open_store(store_url) as store:
        assert store.schema_version() == latest
        assert store.upgrade() == latest
        assert store.upgrade() == latest
        assert store.schema_version() == latest


def test_one_store_shared_by_threads_stays_exact(store_url: str) -> None:
    batches = [
        [ev(f"t{(k * 37 + i) % 300}", f"u{i % 7}", minute=i) for i in range(150)] for k in range(6)
    ]
    expected_ids = {e["event_id"] for batch in batches for e in batch}
    with Ledger(store_url, chunk_size=25) as ledger:
        reports = []
        errors: list[BaseException] = []

        def work(batch: list[dict]) -> None:
            try:
                reports.append(ledger.process(batch, received_at=RECEIVED))
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sum(r.applied for r in reports) == len(expected_ids)
        assert sum(r.duplicates for r in reports) == 900 - len(expected_ids)
        assert all(r.balanced for r in reports)
        total = sum(a["applied"] for u in range(7) if (a := ledger.activity(f"u{u}")))
        assert total == len(expected_ids)
    seqs = rows(store_url, "SELECT user_id, count(*), max(user_seq) FROM events GROUP BY user_id")
    assert all(n == top for _, n, top in seqs)


@pytest.mark.postgres
def test_postgres_errors_are_one_clear_line_without_the_password(pg_server: str) -> None:
    url = "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/nodb?connect_timeout=3"
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert message.startswith("cannot connect to PostgreSQL at 127.0.0.1:1/nodb: ")
    assert "s3cr3t-pw" not in message and "\n" not in message
    assert info.value.__cause__ is None or "s3cr3t-pw" not in str(info.value.__cause__)
