"""SPEC §2 through ``Ledger`` on a real SQLite file: every rule, the stored report, atomicity."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventledger import Ledger, NotFoundError, StoreError
from eventledger.model import Outcome, RejectReason
from eventledger.store import sqlite as sqlite_store
from eventledger.timeutil import datetime_to_us, format_us

RECEIVED_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LATER = RECEIVED_AT + timedelta(hours=1)
MISSING = object()
SKEW = timedelta(minutes=5)


def iso(dt: datetime) -> str:
    text = format_us(datetime_to_us(dt))
    assert text is not None
    return text


def ev(event_id: str = "e1", **fields: Any) -> dict[str, Any]:
    """A valid click of user u1 an hour before RECEIVED_AT, fields replaced."""
    base: dict[str, Any] = {
        "event_id": event_id,
        "user_id": "u1",
        "type": "click",
        "timestamp": "2026-01-01T11:00:00Z",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not MISSING}


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    with Ledger(sqlite_url) as led:
        yield led


@pytest.fixture
def db(sqlite_url: str) -> Iterator[sqlite3.Connection]:
    """A second, plain connection to the same file, to look at what was committed."""
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    yield conn
    conn.close()


def kinds(report: Any) -> list[str]:
    return [o["outcome"] for o in report.to_dict()["outcomes"]]


def reasons(report: Any) -> list[str | None]:
    return [o["reason"] for o in report.to_dict()["outcomes"]]


def last_seen(ledger: Ledger, user_id: str) -> str | None:
    activity = ledger.activity(user_id)
    assert activity is not None
    value = activity["last_seen_at"]
    assert value is None or isinstance(value, str)
    return value


# -- order and no mutation ---------------------------------------------------------------------
def test_input_order_kept(ledger: Ledger, db: sqlite3.Connection) -> None:
    batch = [
        ev("c", timestamp="2026-01-01T11:30:00Z"),
        ev("a", timestamp="2026-01-01T10:00:00Z"),
        b"nope",
        ev("b", timestamp="2026-01-01T11:00:00Z"),
    ]
    report = Ledger.process(ledger, batch, received_at=RECEIVED_AT)
    assert [o["index"] for o in report.to_dict()["outcomes"]] == [0, 1, 2, 3]
    assert [o["event_id"] for o in report.to_dict()["outcomes"]] == ["c", "a", None, "b"]
    rows = db.execute("SELECT event_id, user_seq FROM events ORDER BY user_seq").fetchall()
    assert rows == [("c", 1), ("a", 2), ("b", 3)]


def test_batch_of_dicts_never_sorted_or_mutated(sqlite_url: str) -> None:
    batch = [
        ev("z", user_id="  spaced ", metadata={"b": [3, 1, 2], "a": {"y": 1, "x": 2}}),
        ev("a", user_id=7, type="purchase", metadata={"price": "3.50"}),
        ev("z"),
        ev("m", type="BAD"),
        ev(MISSING),  # type: ignore[arg-type]
    ]
    before = copy.deepcopy(batch)
    with Ledger(sqlite_url, chunk_size=2) as ledger:
        ledger.process(batch, received_at=RECEIVED_AT)
    assert batch == before
    assert [e.get("event_id") for e in batch] == ["z", "a", "z", "m", None]


def test_batch_of_raw_lines_never_mutated(ledger: Ledger) -> None:
    batch: list[Any] = [
        json.dumps(ev("b")).encode(),
        json.dumps(ev("a")),
        bytearray(json.dumps(ev("b")).encode()),
        b"{broken",
    ]
    before = copy.deepcopy(batch)
    report = ledger.process(batch, received_at=RECEIVED_AT)
    assert batch == before
    assert kinds(report) == ["applied", "applied", "duplicate", "rejected"]


def test_any_iterable_is_read_once(ledger: Ledger) -> None:
    report = ledger.process((ev(f"g{i}") for i in range(5)), received_at=RECEIVED_AT)
    assert report.applied == 5


# -- activity tracking --------------------------------------------------------------------------
def test_last_seen_updated_by_applied_event(ledger: Ledger) -> None:
    ledger.process([ev(timestamp="2026-01-01T11:10:00Z")], received_at=RECEIVED_AT)
    assert last_seen(ledger, "u1") == "2026-01-01T11:10:00Z"


def test_last_seen_updated_by_duplicate_event(ledger: Ledger) -> None:
    ledger.process([ev(timestamp="2026-01-01T11:10:00Z")], received_at=RECEIVED_AT)
    report = ledger.process([ev(timestamp="2026-01-01T11:50:00Z")], received_at=RECEIVED_AT)
    assert kinds(report) == ["duplicate"]
    assert last_seen(ledger, "u1") == "2026-01-01T11:50:00Z"
    activity = ledger.activity("u1")
    assert activity is not None and activity["applied"] == 1


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ev(type="Nope"), "invalid_type"),
        (ev(MISSING), "missing_event_id"),  # type: ignore[arg-type]
        (ev(type="purchase"), "invalid_price"),
        (ev(metadata="x"), "invalid_metadata"),
    ],
)
def test_last_seen_updated_by_rejected_event(
    ledger: Ledger, event: dict[str, Any], reason: str
) -> None:
    report = ledger.process([event], received_at=RECEIVED_AT)
    assert reasons(report) == [reason]
    activity = ledger.activity("u1")
    assert activity is not None
    assert activity["last_seen_at"] == "2026-01-01T11:00:00Z"
    assert activity["applied"] == 0 and activity["first_seen_at"] is None
    assert activity["counts"] == {}


def test_last_seen_never_moves_backwards(ledger: Ledger) -> None:
    ledger.process([ev("a", timestamp="2026-01-01T11:40:00Z")], received_at=RECEIVED_AT)
    ledger.process([ev("b", timestamp="2026-01-01T09:00:00Z")], received_at=RECEIVED_AT)
    assert last_seen(ledger, "u1") == "2026-01-01T11:40:00Z"
    # received_at candidate of an old batch does not move it back either
    ledger.process([ev("c", timestamp="garbage")], received_at=RECEIVED_AT - timedelta(days=1))
    assert last_seen(ledger, "u1") == "2026-01-01T11:40:00Z"


def test_last_seen_candidate_is_received_at_for_invalid_or_future_timestamp(
    ledger: Ledger,
) -> None:
    ledger.process([ev("a", user_id="bad-ts", timestamp="soon")], received_at=RECEIVED_AT)
    assert last_seen(ledger, "bad-ts") == iso(RECEIVED_AT)
    report = ledger.process(
        [ev("b", user_id="future", timestamp=iso(RECEIVED_AT + timedelta(days=3)))],
        received_at=RECEIVED_AT,
    )
    assert reasons(report) == ["timestamp_in_future"]
    assert last_seen(ledger, "future") == iso(RECEIVED_AT)


def test_last_seen_candidate_is_timestamp_within_skew(ledger: Ledger) -> None:
    ts = RECEIVED_AT + SKEW
    report = ledger.process([ev(timestamp=iso(ts))], received_at=RECEIVED_AT)
    assert kinds(report) == ["applied"]
    assert last_seen(ledger, "u1") == iso(ts)


def test_max_clock_skew_is_configurable(sqlite_url: str) -> None:
    with Ledger(sqlite_url, max_clock_skew=timedelta(0)) as ledger:
        report = ledger.process(
            [ev("a", timestamp="2026-01-01T12:00:01Z"), ev("b", timestamp="2026-01-01T12:00:00Z")],
            received_at=RECEIVED_AT,
        )
    assert reasons(report) == ["timestamp_in_future", None]


@pytest.mark.parametrize(
    "user_id", [MISSING, None, "", "  ", "x" * 129, 1.5, True, ["u"], "u\x00"], ids=repr
)
def test_no_user_state_for_unusable_user_id(
    ledger: Ledger, db: sqlite3.Connection, user_id: Any
) -> None:
    report = ledger.process([ev(user_id=user_id)], received_at=RECEIVED_AT)
    assert reasons(report)[0] in ("missing_user_id", "invalid_user_id")
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM user_counts").fetchone() == (0,)
    assert ledger.activity("") is None


def test_empty_user_id_rejected_without_state(ledger: Ledger, db: sqlite3.Connection) -> None:
    report = ledger.process([ev(user_id="")], received_at=RECEIVED_AT)
    assert reasons(report) == ["missing_user_id"]
    assert report.to_dict()["outcomes"][0]["user_id"] is None
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_int_user_id_normalised_to_decimal_string(ledger: Ledger) -> None:
    report = ledger.process([ev("a", user_id=42), ev("b", user_id="42")], received_at=RECEIVED_AT)
    assert [o["user_id"] for o in report.to_dict()["outcomes"]] == ["42", "42"]
    activity = ledger.activity(42)
    assert activity is not None and activity["user_id"] == "42"
    assert activity["applied"] == 2
    assert ledger.activity("42") == activity


def test_huge_integer_user_id_from_json_text(ledger: Ledger) -> None:
    line = (
        '{"event_id":"big","user_id":123456789012345678901234567890,'
        '"type":"click","timestamp":"2026-01-01T11:00:00Z"}'
    )
    report = ledger.process([line], received_at=RECEIVED_AT)
    assert kinds(report) == ["applied"]
    assert ledger.activity("123456789012345678901234567890") is not None


# -- dedupe and retries ---------------------------------------------------------------------------
def test_duplicate_of_event_applied_in_store(ledger: Ledger) -> None:
    ledger.process([ev(type="purchase", metadata={"price": 5})], received_at=RECEIVED_AT)
    report = ledger.process([ev(type="purchase", metadata={"price": 5})], received_at=LATER)
    assert kinds(report) == ["duplicate"]
    assert report.to_dict()["outcomes"][0]["detail"] is None
    assert ledger.fetch_user_activity_summary("u1") == {
        "click": 0,
        "view": 0,
        "purchase": 1,
        "total_value": 5.0,
    }


def test_duplicate_earlier_in_same_batch(ledger: Ledger) -> None:
    report = ledger.process([ev(), ev("e2"), ev()], received_at=RECEIVED_AT)
    assert kinds(report) == ["applied", "applied", "duplicate"]
    assert ledger.fetch_user_activity_summary("u1")["click"] == 2


def test_duplicate_across_chunks_of_one_batch(sqlite_url: str, db: sqlite3.Connection) -> None:
    batch = [ev(f"e{i}") for i in range(7)] + [ev("e0"), ev("e4"), ev("e6")]
    with Ledger(sqlite_url, chunk_size=3) as ledger:
        report = ledger.process(batch, received_at=RECEIVED_AT)
    assert kinds(report) == ["applied"] * 7 + ["duplicate"] * 3
    assert db.execute("SELECT count(*) FROM events").fetchone() == (7,)
    assert db.execute("SELECT n FROM user_counts").fetchone() == (7,)


def test_duplicate_with_different_content_says_so(ledger: Ledger) -> None:
    ledger.process([ev(type="view")], received_at=RECEIVED_AT)
    report = ledger.process([ev(type="click"), ev(type="view")], received_at=RECEIVED_AT)
    outcomes = report.to_dict()["outcomes"]
    assert [o["outcome"] for o in outcomes] == ["duplicate", "duplicate"]
    assert outcomes[0]["detail"] is not None and "differs" in outcomes[0]["detail"]
    assert outcomes[1]["detail"] is None
    assert ledger.fetch_user_activity_summary("u1")["view"] == 1


def test_rejected_then_corrected_retry_in_same_batch(ledger: Ledger) -> None:
    bad = ev("p1", type="purchase", metadata={"price": "N/A"})
    good = ev("p1", type="purchase", metadata={"price": "19.99"})
    report = ledger.process([bad, good], received_at=RECEIVED_AT)
    assert kinds(report) == ["rejected", "applied"]
    assert reasons(report) == ["invalid_price", None]
    assert ledger.fetch_user_activity_summary("u1")["total_value"] == 19.99


def test_rejected_then_corrected_retry_across_batches(ledger: Ledger) -> None:
    first = ledger.process([ev("p1", type="purchase")], received_at=RECEIVED_AT)
    assert reasons(first) == ["invalid_price"]
    retry = ledger.process([ev("p1", type="purchase", metadata={"price": 4.25})], received_at=LATER)
    assert kinds(retry) == ["applied"]
    again = ledger.process([ev("p1", type="purchase", metadata={"price": 4.25})], received_at=LATER)
    assert kinds(again) == ["duplicate"]
    assert ledger.fetch_user_activity_summary("u1") == {
        "click": 0,
        "view": 0,
        "purchase": 1,
        "total_value": 4.25,
    }


def test_rejected_then_corrected_retry_across_chunks(sqlite_url: str) -> None:
    batch = [ev("r", type="X"), ev("a1"), ev("a2"), ev("a3"), ev("r")]
    with Ledger(sqlite_url, chunk_size=3) as ledger:
        report = ledger.process(batch, received_at=RECEIVED_AT)
    assert kinds(report) == ["rejected", "applied", "applied", "applied", "applied"]


def test_duplicate_of_rejected_event_is_not_a_duplicate(ledger: Ledger) -> None:
    first = ledger.process([ev(type="Bad")], received_at=RECEIVED_AT)
    second = ledger.process([ev(type="Bad"), ev(type="Bad")], received_at=RECEIVED_AT)
    assert kinds(first) == ["rejected"]
    assert kinds(second) == ["rejected", "rejected"]
    assert second.duplicates == 0
    assert reasons(second) == ["invalid_type", "invalid_type"]


def test_out_of_order_events(ledger: Ledger) -> None:
    batch = [
        ev("late", timestamp="2026-01-01T11:45:00Z"),
        ev("early", timestamp="2026-01-01T08:00:00Z"),
        ev("mid", timestamp="2026-01-01T10:00:00Z"),
    ]
    report = ledger.process(batch, received_at=RECEIVED_AT)
    assert kinds(report) == ["applied"] * 3
    activity = ledger.activity("u1")
    assert activity is not None
    assert activity["last_seen_at"] == "2026-01-01T11:45:00Z"
    assert activity["first_seen_at"] == "2026-01-01T08:00:00Z"
    ledger.process([ev("earliest", timestamp="2025-12-31T00:00:00Z")], received_at=LATER)
    activity = ledger.activity("u1")
    assert activity is not None
    assert activity["last_seen_at"] == "2026-01-01T11:45:00Z"
    assert activity["first_seen_at"] == "2025-12-31T00:00:00Z"


def test_event_before_1970_applies(ledger: Ledger) -> None:
    # A regression: a negative timestamp was never recorded as last_seen and the apply
    # crashed with a KeyError.
    report = ledger.process([ev(timestamp="1969-07-20T20:17:40Z")], received_at=RECEIVED_AT)
    assert kinds(report) == ["applied"]
    assert last_seen(ledger, "u1") == "1969-07-20T20:17:40Z"


# -- rejection codes through the store -------------------------------------------------------------
def test_unknown_type_with_allowlist(sqlite_url: str) -> None:
    with Ledger(sqlite_url, type_allowlist=["click", "view"]) as ledger:
        report = ledger.process(
            [ev("a", type="view"), ev("b", type="signup"), ev("c", type="Bad!")],
            received_at=RECEIVED_AT,
        )
    assert reasons(report) == [None, "unknown_type", "invalid_type"]


EVERY_CODE: list[tuple[Any, str]] = [
    (b'{"event_id": ', "malformed_json"),
    (b"[]", "not_an_object"),
    (ev(MISSING), "missing_event_id"),  # type: ignore[arg-type]
    (ev(" "), "invalid_event_id"),
    (ev(user_id=MISSING), "missing_user_id"),
    (ev(user_id=[]), "invalid_user_id"),
    (ev(type=MISSING), "missing_type"),
    (ev(type="A"), "invalid_type"),
    (ev(type="zzz"), "unknown_type"),
    (ev(timestamp=MISSING), "missing_timestamp"),
    (ev(timestamp="2026-01-01T11:00:00"), "invalid_timestamp"),
    (ev(timestamp="2026-01-01T12:05:01Z"), "timestamp_in_future"),
    (ev(metadata=[]), "invalid_metadata"),
    (ev(type="purchase", metadata={"price": "1,50"}), "invalid_price"),
    (ev(sequence=0), "invalid_sequence"),
]


def test_every_rejection_code_has_a_case() -> None:
    assert {code for _, code in EVERY_CODE} == {r.value for r in RejectReason}


@pytest.mark.parametrize(("event", "code"), EVERY_CODE, ids=[c for _, c in EVERY_CODE])
def test_each_rejection_code_through_the_store(sqlite_url: str, event: Any, code: str) -> None:
    with Ledger(sqlite_url, type_allowlist=["click", "view", "purchase"]) as ledger:
        report = ledger.process([event, ev("ok")], received_at=RECEIVED_AT)
        stored = ledger.report(report.batch_id)
    assert reasons(report) == [code, None]
    assert report.rejected_by_reason == {code: 1}
    assert stored["outcomes"][0]["reason"] == code
    assert stored["outcomes"][0]["detail"] == report.to_dict()["outcomes"][0]["detail"]


def test_timestamp_formats(ledger: Ledger) -> None:
    batch = [
        ev("utc", timestamp="2026-01-01T11:00:00Z"),
        ev("plus", timestamp="2026-01-01T13:00:00+02:00"),
        ev("minus", timestamp="2026-01-01T06:30:00.5-04:30"),
        ev("ms", timestamp=1767265200000),
        ev("naive", timestamp="2026-01-01T11:00:00"),
        ev("date", timestamp="2026-01-01"),
        ev("float", timestamp=1767265200000.0),
    ]
    report = ledger.process(batch, received_at=RECEIVED_AT)
    assert reasons(report) == [None] * 4 + ["invalid_timestamp"] * 3


# -- sequences --------------------------------------------------------------------------------
def test_per_user_sequence_in_apply_order(sqlite_url: str, db: sqlite3.Connection) -> None:
    with Ledger(sqlite_url, chunk_size=3) as ledger:
        ledger.process(
            [
                ev("a1"),
                ev("b1", user_id="u2"),
                ev("a2", timestamp="2026-01-01T01:00:00Z"),
                ev("bad", type="?"),
                ev("a1"),
                ev("a3", sequence=99),
                ev("b2", user_id="u2"),
            ],
            received_at=RECEIVED_AT,
        )
        ledger.process([ev("a4"), ev("b3", user_id="u2")], received_at=LATER)
    rows = db.execute(
        "SELECT user_id, event_id, user_seq, sequence FROM events ORDER BY user_id, user_seq"
    ).fetchall()
    assert rows == [
        ("u1", "a1", 1, None),
        ("u1", "a2", 2, None),
        ("u1", "a3", 3, 99),
        ("u1", "a4", 4, None),
        ("u2", "b1", 1, None),
        ("u2", "b2", 2, None),
        ("u2", "b3", 3, None),
    ]


# -- the report -----------------------------------------------------------------------------------
def mixed_batch() -> list[Any]:
    return [
        ev("a"),
        ev("b", user_id=5, type="purchase", metadata={"price": 2}),
        ev("a"),
        b"not json",
        "[1]",
        ev("c", type="Nope"),
        ev("d", user_id=" "),
        ev("e", type="purchase", metadata={"price": -1}),
        ev("a", type="view"),
        ev("f", timestamp="2030-01-01T00:00:00Z"),
    ]


def test_report_shape_and_counts(sqlite_url: str) -> None:
    with Ledger(sqlite_url, chunk_size=3) as ledger:
        report = ledger.process(mixed_batch(), received_at=RECEIVED_AT)
    data = report.to_dict()
    assert list(data) == [
        "batch_id",
        "received_at",
        "total",
        "applied",
        "duplicates",
        "rejected",
        "rejected_by_reason",
        "balanced",
        "outcomes",
    ]
    assert data["received_at"] == "2026-01-01T12:00:00Z"
    assert (data["total"], data["applied"], data["duplicates"], data["rejected"]) == (10, 2, 2, 6)
    assert data["rejected_by_reason"] == {
        "invalid_price": 1,
        "invalid_type": 1,
        "malformed_json": 1,
        "missing_user_id": 1,
        "not_an_object": 1,
        "timestamp_in_future": 1,
    }
    assert data["balanced"] is True
    assert len(data["outcomes"]) == 10
    for o in data["outcomes"]:
        assert list(o) == ["index", "event_id", "user_id", "outcome", "reason", "detail"]
        assert (o["reason"] is None) == (o["outcome"] != "rejected")
        if o["outcome"] == "rejected":
            assert o["detail"]
    assert data["outcomes"][8]["detail"] is not None  # a duplicate with other content
    json.dumps(data)  # the JSON form is JSON


def test_stored_report_equals_returned(store_url: str) -> None:
    with Ledger(store_url, chunk_size=3) as ledger:
        report = ledger.process(mixed_batch(), received_at=RECEIVED_AT)
        stored = ledger.report(report.batch_id)
        other = ledger.process(mixed_batch(), received_at=LATER)
        assert ledger.report(report.batch_id) == stored
        assert ledger.report(other.batch_id) == other.to_dict()
    assert stored == report.to_dict()


def test_report_of_unknown_batch(ledger: Ledger) -> None:
    with pytest.raises(NotFoundError):
        ledger.report("no-such-batch")


def test_empty_batch_report(ledger: Ledger) -> None:
    report = ledger.process([], received_at=RECEIVED_AT)
    assert report.to_dict()["total"] == 0 and report.balanced
    assert ledger.report(report.batch_id) == report.to_dict()


def test_streamed_outcomes_cover_every_event(sqlite_url: str) -> None:
    seen: list[Outcome] = []
    with Ledger(sqlite_url, chunk_size=4) as ledger:
        report = ledger.process(
            mixed_batch(), received_at=RECEIVED_AT, outcome_sink=seen.append, keep_outcomes=False
        )
        stored = ledger.report(report.batch_id)
    assert [o.index for o in seen] == list(range(10))
    assert report.outcomes == [] and report.total == 10 and report.balanced
    assert stored["outcomes"] == [o.to_dict() for o in seen]


def test_activity_and_summary(ledger: Ledger) -> None:
    ledger.process(
        [
            ev("a", type="view"),
            ev("b", type="purchase", metadata={"price": "10.50"}),
            ev("c", type="purchase", metadata={"price": 0.25}),
            ev("d", type="signup"),
            ev("e", type="click", timestamp="2026-01-01T10:00:00Z"),
        ],
        received_at=RECEIVED_AT,
    )
    assert ledger.activity("u1") == {
        "user_id": "u1",
        "last_seen_at": "2026-01-01T11:00:00Z",
        "first_seen_at": "2026-01-01T10:00:00Z",
        "applied": 5,
        "counts": {"click": 1, "purchase": 2, "signup": 1, "view": 1},
        "total_value": 10.75,
    }
    assert ledger.fetch_user_activity_summary("u1") == {
        "click": 1,
        "view": 1,
        "purchase": 2,
        "total_value": 10.75,
    }
    assert ledger.activity("nobody") is None
    assert ledger.fetch_user_activity_summary("nobody") == {
        "click": 0,
        "view": 0,
        "purchase": 0,
        "total_value": 0.0,
    }


# -- atomicity: effects and the applied record commit together -------------------------------
def test_failure_mid_chunk_leaves_nothing_of_that_chunk(
    sqlite_url: str, db: sqlite3.Connection
) -> None:
    ledger = Ledger(sqlite_url, chunk_size=3)
    db.execute(
        "CREATE TRIGGER fail_counts BEFORE INSERT ON user_counts WHEN NEW.user_id = 'boom'"
        " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    db.commit()
    batch = [
        ev("c1-a"),
        ev("c1-b", user_id="u2"),
        ev("c1-c", type="?"),
        ev("c2-a", user_id="u2", timestamp="2026-01-01T11:59:00Z"),
        ev("c2-b", user_id="boom"),
        ev("c2-c", type="?", user_id="u3"),
        ev("c3-a"),
    ]
    with pytest.raises(StoreError, match="injected failure"):
        ledger.process(batch, received_at=RECEIVED_AT)

    # Chunk 1 committed whole; chunk 2 left no trace: no event, no count, no user, no
    # last_seen move, no outcome; chunk 3 never ran.
    events = [r[0] for r in db.execute("SELECT event_id FROM events ORDER BY event_id")]
    assert events == ["c1-a", "c1-b"]
    assert db.execute("SELECT user_id, type, n FROM user_counts ORDER BY user_id").fetchall() == [
        ("u1", "click", 1),
        ("u2", "click", 1),
    ]
    users = db.execute("SELECT user_id, applied_count FROM users ORDER BY user_id").fetchall()
    assert users == [("u1", 1), ("u2", 1)]
    assert last_seen(ledger, "u2") == "2026-01-01T11:00:00Z"
    assert db.execute("SELECT batch_index FROM batch_outcomes").fetchall() == [(2,)]

    # The store stays usable, and the same batch sent again completes exactly once.
    db.execute("DROP TRIGGER fail_counts")
    db.commit()
    report = ledger.process(batch, received_at=RECEIVED_AT)
    assert kinds(report) == [
        "duplicate",
        "duplicate",
        "rejected",
        "applied",
        "applied",
        "rejected",
        "applied",
    ]
    assert db.execute("SELECT count(*) FROM events").fetchone() == (5,)
    assert last_seen(ledger, "u2") == "2026-01-01T11:59:00Z"
    ledger.close()


def test_failure_on_event_insert_rolls_back_user_state(
    sqlite_url: str, db: sqlite3.Connection
) -> None:
    ledger = Ledger(sqlite_url)
    db.execute(
        "CREATE TRIGGER fail_events BEFORE INSERT ON events WHEN NEW.event_id = 'x3'"
        " BEGIN SELECT RAISE(ABORT, 'no events today'); END"
    )
    db.commit()
    with pytest.raises(StoreError):
        ledger.process([ev("x1"), ev("x2", user_id="u2"), ev("x3")], received_at=RECEIVED_AT)
    assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM user_counts").fetchone() == (0,)
    assert ledger.activity("u1") is None
    ledger.close()


def test_database_locked_mid_batch_fails_cleanly(
    sqlite_url: str, db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.2)
    ledger = Ledger(sqlite_url, chunk_size=2)

    def lock_after_first_chunk(done: int) -> None:
        if done == 2:
            db.execute("BEGIN IMMEDIATE")  # another writer takes the write lock

    batch = [ev("l1"), ev("l2"), ev("l3", user_id="u2"), ev("l4", user_id="u2")]
    with pytest.raises(StoreError, match="locked"):
        ledger.process(batch, received_at=RECEIVED_AT, progress=lock_after_first_chunk)
    db.rollback()
    assert db.execute("SELECT event_id FROM events ORDER BY 1").fetchall() == [("l1",), ("l2",)]
    assert ledger.activity("u2") is None
    report = ledger.process(batch, received_at=RECEIVED_AT)
    assert kinds(report) == ["duplicate", "duplicate", "applied", "applied"]
    ledger.close()


def test_closed_ledger_raises_store_error_not_crash(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    ledger.close()
    with pytest.raises(StoreError):
        ledger.process([ev()], received_at=RECEIVED_AT)


# -- malformed input of every kind ------------------------------------------------------------
def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _line(**fields: Any) -> str:
    return json.dumps({**ev("bad"), **fields})


MB = "x" * (1 << 20)
VALID = '{"event_id":"bad","user_id":"u1","type":"click","timestamp":"2026-01-01T11:00:00Z"'

MALFORMED: list[tuple[str, Any, str]] = [
    ("not json", b"this is not json", "malformed_json"),
    ("truncated", VALID.encode(), "malformed_json"),
    ("empty line", b"", "malformed_json"),
    ("json array", b"[1, 2]", "not_an_object"),
    ("json number", b"42", "not_an_object"),
    ("json null", b"null", "not_an_object"),
    ("json string", b'"event"', "not_an_object"),
    ("json true", b"true", "not_an_object"),
    ("json false", b"false", "not_an_object"),
    ("python list", [ev()], "not_an_object"),
    ("python none", None, "not_an_object"),
    ("python int", 7, "not_an_object"),
    ("event_id int", ev(5), "invalid_event_id"),
    ("event_id float", ev(1.5), "invalid_event_id"),
    ("event_id bool", ev(True), "invalid_event_id"),
    ("event_id list", ev(["e"]), "invalid_event_id"),
    ("event_id object", ev({"e": 1}), "invalid_event_id"),
    ("event_id null", ev(None), "missing_event_id"),
    ("user_id float", ev(user_id=1.0), "invalid_user_id"),
    ("user_id bool", ev(user_id=False), "invalid_user_id"),
    ("user_id list", ev(user_id=[1]), "invalid_user_id"),
    ("user_id object", ev(user_id={}), "invalid_user_id"),
    ("type int", ev(type=1), "invalid_type"),
    ("type list", ev(type=["click"]), "invalid_type"),
    ("type null", ev(type=None), "missing_type"),
    ("timestamp float", ev(timestamp=1.767e12), "invalid_timestamp"),
    ("timestamp bool", ev(timestamp=True), "invalid_timestamp"),
    ("timestamp list", ev(timestamp=[]), "invalid_timestamp"),
    ("timestamp object", ev(timestamp={}), "invalid_timestamp"),
    ("metadata list", ev(metadata=[]), "invalid_metadata"),
    ("metadata string", ev(metadata="{}"), "invalid_metadata"),
    ("metadata number", ev(metadata=1), "invalid_metadata"),
    ("sequence string", ev(sequence="1"), "invalid_sequence"),
    ("sequence float", ev(sequence=1.0), "invalid_sequence"),
    ("price object", ev(type="purchase", metadata={"price": {}}), "invalid_price"),
    ("huge event_id", ev(MB), "invalid_event_id"),
    ("huge user_id", ev(user_id=MB), "invalid_user_id"),
    ("huge type", ev(type=MB), "invalid_type"),
    ("huge timestamp", ev(timestamp=MB), "invalid_timestamp"),
    ("huge metadata", ev(metadata={"s": MB}), "invalid_metadata"),
    ("huge event_id line", _line(event_id=MB).encode(), "invalid_event_id"),
    ("metadata depth 17", ev(metadata=_deep(17)), "invalid_metadata"),
    ("metadata depth 17 line", _line(metadata=_deep(17)), "invalid_metadata"),
    ("metadata depth 5000", ev(metadata=_deep(5000)), "invalid_metadata"),
    (
        "metadata depth 5000 line",
        VALID + ',"metadata":' + '{"a":' * 4999 + "{}" + "}" * 4999 + "}",
        "malformed_json",
    ),
    ("nul event_id", ev("e\x00"), "invalid_event_id"),
    ("nul user_id", ev(user_id="u\x00"), "invalid_user_id"),
    ("nul type", ev(type="click\x00"), "invalid_type"),
    ("nul timestamp", ev(timestamp="2026-01-01T11:00:00Z\x00"), "invalid_timestamp"),
    ("nul metadata value", ev(metadata={"k": "\x00"}), "invalid_metadata"),
    ("nul metadata key", ev(metadata={"\x00": 1}), "invalid_metadata"),
    ("nul nested metadata", ev(metadata={"a": [{"b": "x\x00y"}]}), "invalid_metadata"),
    ("nul event_id line", _line(event_id="e\x00"), "invalid_event_id"),
    ("nul metadata line", _line(metadata={"k": "\x00"}).encode(), "invalid_metadata"),
    ("surrogate event_id", ev("e\ud800"), "invalid_event_id"),
    ("surrogate user_id", ev(user_id="\udfff"), "invalid_user_id"),
    ("surrogate type", ev(type="\ud800"), "invalid_type"),
    ("surrogate timestamp", ev(timestamp="\ud800"), "invalid_timestamp"),
    ("surrogate metadata", ev(metadata={"k": "\ud800"}), "invalid_metadata"),
    ("surrogate event_id line", VALID.replace('"bad"', '"\\ud800"') + "}", "invalid_event_id"),
    ("surrogate user_id line", VALID.replace('"u1"', '"u\\udc00"') + "}", "invalid_user_id"),
    ("surrogate metadata line", VALID + ',"metadata":{"k":"\\ud800"}}', "invalid_metadata"),
    ("raw surrogate in str line", VALID.replace('"bad"', '"\ud800"') + "}", "invalid_event_id"),
    ("invalid utf-8 line", VALID.encode().replace(b"bad", b"b\xffd") + b"}", "malformed_json"),
    ("huge int user_id line", VALID.replace('"u1"', "1" + "0" * 300) + "}", "invalid_user_id"),
    ("huge int event_id line", VALID.replace('"bad"', "9" * 40) + "}", "invalid_event_id"),
    (
        "huge int timestamp line",
        VALID.replace('"2026-01-01T11:00:00Z"', "9" * 40) + "}",
        "invalid_timestamp",
    ),
    ("huge int sequence line", VALID + ',"sequence":' + "9" * 40 + "}", "invalid_sequence"),
    ("5000-digit int line", VALID + ',"sequence":' + "9" * 5000 + "}", "malformed_json"),
    ("huge int user_id", ev(user_id=10**300), "invalid_user_id"),
    ("NaN literal", VALID + ',"metadata":{"price":NaN}}', "malformed_json"),
    ("Infinity literal", VALID + ',"sequence":Infinity}', "malformed_json"),
    ("-Infinity literal", VALID + ',"metadata":{"x":-Infinity}}', "malformed_json"),
    ("NaN price dict", ev(type="purchase", metadata={"price": float("nan")}), "invalid_metadata"),
    ("Infinity metadata dict", ev(metadata={"x": [float("inf")]}), "invalid_metadata"),
    ("BOM line", b"\xef\xbb\xbf" + VALID.encode() + b"}", "malformed_json"),
]


@pytest.mark.parametrize(("bad", "code"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_input_gets_a_code_and_the_rest_counts(
    store_url: str, bad: Any, code: str
) -> None:
    """On both backends: odd strings and values must not upset either driver."""
    good_before = ev("good-1", user_id="g")
    good_after = ev("good-2", user_id="g", type="purchase", metadata={"price": 1})
    with Ledger(store_url, chunk_size=2) as ledger:
        report = ledger.process([good_before, bad, good_after], received_at=RECEIVED_AT)
        stored = ledger.report(report.batch_id)
        summary = ledger.fetch_user_activity_summary("g")
    assert reasons(report) == [None, code, None]
    assert kinds(report) == ["applied", "rejected", "applied"]
    assert report.balanced and report.total == 3
    assert report.rejected_by_reason == {code: 1}
    assert report.to_dict()["outcomes"][1]["detail"]
    assert stored == report.to_dict()
    assert summary == {"click": 1, "view": 0, "purchase": 1, "total_value": 1.0}
    json.dumps(report.to_dict())  # the report of bad input is still valid JSON text
