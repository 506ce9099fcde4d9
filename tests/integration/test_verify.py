"""``verify``: recompute the maintained aggregate from the stored events, both backends; every
kind of corruption a test injects on purpose is reported, and nothing else."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import psycopg
import pytest

from eventledger import Ledger
from eventledger.store.sqlite import sqlite_path
from eventledger.summary import Mismatch, verify_store


def raw_sql(url: str, statement: str) -> None:
    """Run a statement directly against the database, behind eventledger's back."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(sqlite_path(url))) as conn:
            conn.execute(statement)
            conn.commit()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]


def events() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(60):
        user = f"u{i % 3}"
        kind = ("click", "view", "purchase", "signup")[i % 4]
        event: dict[str, Any] = {
            "event_id": f"e{i}",
            "user_id": user,
            "type": kind,
            "timestamp": 1_767_225_600_000 + i * 1000,
        }
        if kind == "purchase":
            event["metadata"] = {"price": f"{i}.10"}
        out.append(event)
    return out


@pytest.fixture
def ledger(store_url: str) -> Iterator[Ledger]:
    with Ledger(store_url) as led:
        report = led.process(events())
        assert report.applied == 60
        led.process([{"event_id": "", "user_id": "only-rejected", "type": "click"}])
        yield led


def fields(mismatches: list[Mismatch]) -> set[tuple[str, str]]:
    return {(m.user_id, m.field) for m in mismatches}


def test_clean_store_verifies(ledger: Ledger) -> None:
    result = ledger.verify()
    assert result.ok and result.mismatches == []
    assert result.users_checked == 4  # u0, u1, u2 and the user with only a rejected event
    one = ledger.verify("u1")
    assert one.ok and one.users_checked == 1 and one.user_id == "u1"
    assert ledger.verify("nobody").users_checked == 0
    assert result.to_dict() == {"user_id": None, "users_checked": 4, "ok": True, "mismatches": []}


def test_injected_count_mismatch_is_found(ledger: Ledger, store_url: str) -> None:
    raw_sql(store_url, "UPDATE user_counts SET n = n + 1 WHERE user_id = 'u1' AND type = 'click'")
    result = ledger.verify()
    assert not result.ok
    assert result.mismatches == [
        Mismatch(user_id="u1", field="count.click", maintained=6, recomputed=5)
    ]
    assert ledger.verify("u2").ok
    assert not ledger.verify("u1").ok


def test_injected_total_value_mismatch_is_found(ledger: Ledger, store_url: str) -> None:
    raw_sql(store_url, "UPDATE users SET total_value = total_value + 0.01 WHERE user_id = 'u2'")
    assert fields(ledger.verify().mismatches) == {("u2", "total_value")}


def test_float_rounding_noise_is_not_a_mismatch(ledger: Ledger, store_url: str) -> None:
    raw_sql(store_url, "UPDATE users SET total_value = total_value * (1 + 1e-13)")
    assert ledger.verify().ok


def test_injected_first_seen_and_applied_mismatch(ledger: Ledger, store_url: str) -> None:
    raw_sql(store_url, "UPDATE users SET first_seen_at = first_seen_at + 1 WHERE user_id = 'u0'")
    raw_sql(store_url, "UPDATE users SET applied_count = 99 WHERE user_id = 'u0'")
    found = ledger.verify().mismatches
    assert fields(found) == {("u0", "first_seen_at"), ("u0", "applied_count")}
    applied = next(m for m in found if m.field == "applied_count")
    assert (applied.maintained, applied.recomputed) == (99, 20)


def test_deleted_event_and_extra_count_are_found(ledger: Ledger, store_url: str) -> None:
    # e2 is u2's first event, a purchase of 2.10
    raw_sql(store_url, "DELETE FROM events WHERE event_id = 'e2'")
    raw_sql(store_url, "INSERT INTO user_counts (user_id, type, n) VALUES ('u0', 'refund', 1)")
    found = fields(ledger.verify().mismatches)
    assert found == {
        ("u2", "count.purchase"),
        ("u2", "applied_count"),
        ("u2", "total_value"),
        ("u2", "first_seen_at"),
        ("u0", "count.refund"),
    }


def test_events_of_a_user_without_aggregate_row(ledger: Ledger, store_url: str) -> None:
    raw_sql(store_url, "DELETE FROM user_counts WHERE user_id = 'u1'")
    raw_sql(store_url, "DELETE FROM users WHERE user_id = 'u1'")
    result = verify_store(ledger.store)
    assert fields(result.mismatches) == {("u1", "user")}
    assert result.to_dict()["ok"] is False
