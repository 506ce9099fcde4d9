"""Summaries on eventledger's own store, both backends: the maintained aggregate equals the
legacy logic applied to the events that were applied."""

from __future__ import annotations

import math
import random
import sys
from collections import defaultdict
from typing import Any

import pytest

from eventledger import Ledger
from eventledger.legacy import legacy_price, legacy_summary_from_rows

USERS = [f"u{i}" for i in range(12)] + ["  padded  ", "42"]
PRICES: list[Any] = [12.5, 3, 0, "19.99", "0.10", "7", 1e9, 0.1, "N/A", -1, None, "", "1e3"]


def generate(seed: int, n: int) -> list[dict[str, Any]]:
    """A batch with every kind of event: applied, duplicate, rejected, retried."""
    rnd = random.Random(seed)
    events: list[dict[str, Any]] = []
    for _ in range(n):
        user: Any = rnd.choice(USERS)
        if user == "42" and rnd.random() < 0.5:
            user = 42  # an integer user id is the same user as "42"
        kind = rnd.choice(["click", "view", "purchase", "purchase", "signup", "page.view"])
        meta: dict[str, Any] = {"nested": {"price": 1000, "list": [1, {"a": None}]}}
        if kind == "purchase" and rnd.random() < 0.95:
            meta["price"] = rnd.choice(PRICES)
        event = {
            "event_id": f"e{rnd.randrange(n)}",  # collisions give duplicates
            "user_id": user,
            "type": kind,
            "timestamp": 1_767_225_600_000 + rnd.randrange(10**7),
            "metadata": meta,
        }
        if rnd.random() < 0.03:
            del event["timestamp"]
        events.append(event)
    return events


def oracle(events: list[dict[str, Any]], applied: set[int]) -> dict[str, dict[str, Any]]:
    rows: defaultdict[str, list[tuple[Any, str, Any]]] = defaultdict(list)
    for i in sorted(applied):
        e = events[i]
        rows[str(e["user_id"]).strip()].append((e["event_id"], e["type"], e["metadata"]))
    return {user: legacy_summary_from_rows(r) for user, r in rows.items()}


def assert_summary_equal(got: dict[str, Any], want: dict[str, Any], mag: float, n: int) -> None:
    assert {k: got[k] for k in ("click", "view", "purchase")} == {
        k: want[k] for k in ("click", "view", "purchase")
    }
    assert abs(got["total_value"] - want["total_value"]) <= n * sys.float_info.epsilon * mag


@pytest.mark.parametrize("seed", [1, 2])
def test_summary_equals_the_legacy_logic_over_applied_events(store_url: str, seed: int) -> None:
    events = generate(seed, 1500)
    with Ledger(store_url, chunk_size=200) as ledger:
        report = ledger.process(events)
        applied = {o.index for o in report.outcomes if o.outcome.value == "applied"}
        assert report.applied == len(applied) > 0 and report.duplicates > 0 and report.rejected > 0
        want = oracle(events, applied)
        for user, expected in want.items():
            prices = [
                p
                for i in applied
                if str(events[i]["user_id"]).strip() == user and events[i]["type"] == "purchase"
                if (p := legacy_price(events[i]["metadata"])) is not None
            ]
            got = ledger.fetch_user_activity_summary(user)
            assert list(got) == ["click", "view", "purchase", "total_value"]
            assert_summary_equal(got, expected, math.fsum(map(abs, prices)), len(prices))
        assert sum(w["purchase"] for w in want.values()) > 50
        assert ledger.verify().ok


def test_activity_has_every_type_and_first_and_last_seen(store_url: str) -> None:
    events = [
        {"event_id": "a", "user_id": "u", "type": "click", "timestamp": "2026-01-01T00:00:05Z"},
        {"event_id": "b", "user_id": "u", "type": "signup", "timestamp": "2026-01-01T00:00:01Z"},
        {
            "event_id": "c",
            "user_id": "u",
            "type": "purchase",
            "timestamp": "2026-01-01T00:00:09Z",
            "metadata": {"price": "10.25"},
        },
        {"event_id": "a", "user_id": "u", "type": "click", "timestamp": "2026-01-01T00:00:07Z"},
        {"event_id": "d", "user_id": "u", "type": "purchase", "timestamp": "2026-01-01T00:00:20Z"},
    ]
    with Ledger(store_url) as ledger:
        report = ledger.process(events)
        assert (report.applied, report.duplicates, report.rejected) == (3, 1, 1)
        activity = ledger.activity("u")
        assert activity is not None
        assert activity["counts"] == {"click": 1, "purchase": 1, "signup": 1}
        assert activity["applied"] == 3
        assert activity["total_value"] == 10.25
        assert activity["first_seen_at"].startswith("2026-01-01T00:00:01")
        # the rejected purchase (no price) still counts as activity
        assert activity["last_seen_at"].startswith("2026-01-01T00:00:20")
        assert ledger.fetch_user_activity_summary("u") == {
            "click": 1,
            "view": 0,
            "purchase": 1,
            "total_value": 10.25,
        }


def test_unknown_user_gets_zeros(store_url: str) -> None:
    with Ledger(store_url) as ledger:
        ledger.process(
            [{"event_id": "x", "user_id": "seen", "type": "view", "timestamp": 1_767_225_600_000}]
        )
        summary = ledger.fetch_user_activity_summary("never-seen")
        assert summary == {"click": 0, "view": 0, "purchase": 0, "total_value": 0.0}
        assert isinstance(summary["total_value"], float)
        assert ledger.activity("never-seen") is None
        # a user seen only through rejected events has zeros too
        ledger.process([{"event_id": "", "user_id": "rejected-only", "type": "click"}])
        assert ledger.fetch_user_activity_summary("rejected-only") == summary
