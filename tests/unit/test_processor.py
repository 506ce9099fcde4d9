"""SPEC §2 rule by rule, on the pure processor (no store: a dict is the store's view)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from eventledger.model import OutcomeKind, RejectReason
from eventledger.processor import (
    ChunkDecision,
    ParsedValue,
    Processor,
    Unparsable,
    content_hash,
    normalize_user_id,
    parse_item,
    parse_timestamp_us,
)
from eventledger.timeutil import datetime_to_us

RECEIVED_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RA_US = datetime_to_us(RECEIVED_AT)
HOUR_AGO = "2026-01-01T11:00:00Z"
HOUR_AGO_US = RA_US - 3600 * 1_000_000
SKEW_US = 5 * 60 * 1_000_000
MISSING = object()


def ev(**fields: Any) -> dict[str, Any]:
    """A valid click event, with fields replaced (MISSING removes one)."""
    base: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "type": "click",
        "timestamp": HOUR_AGO,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not MISSING}


def decide(
    items: Sequence[Any],
    applied_in_store: Mapping[str, str] | None = None,
    *,
    allowlist: frozenset[str] | None = None,
    skew_us: int = SKEW_US,
    first_index: int = 0,
) -> ChunkDecision:
    processor = Processor(received_at_us=RA_US, max_clock_skew_us=skew_us, type_allowlist=allowlist)
    values = [parse_item(i) for i in items]
    return processor.decide_chunk(values, applied_in_store or {}, first_index)


def only(items: Sequence[Any], **kw: Any) -> tuple[OutcomeKind, RejectReason | None]:
    decision = decide(items, **kw)
    assert len(decision.outcomes) == len(items)
    last = decision.outcomes[-1]
    return last.outcome, last.reason


def reason_of(event: Any, **kw: Any) -> RejectReason | None:
    outcome, reason = only([event], **kw)
    if outcome is OutcomeKind.REJECTED:
        assert reason is not None
    else:
        assert reason is None
    return reason


# -- input order, no mutation -------------------------------------------------------------
def test_outcomes_follow_input_order_with_batch_indexes() -> None:
    items = [
        ev(event_id="c", timestamp="2026-01-01T11:30:00Z"),
        ev(event_id="a", timestamp="2026-01-01T10:00:00Z"),
        "not json",
        ev(event_id="b", timestamp="2026-01-01T11:00:00Z"),
    ]
    decision = decide(items, first_index=10)
    assert [o.index for o in decision.outcomes] == [10, 11, 12, 13]
    assert [o.event_id for o in decision.outcomes] == ["c", "a", None, "b"]
    assert [a.event_id for a in decision.applied] == ["c", "a", "b"]
    assert [a.index for a in decision.applied] == [10, 11, 13]


def test_batch_of_dicts_is_not_mutated() -> None:
    items = [
        ev(event_id="z", metadata={"nested": {"list": [3, 1, 2]}}),
        ev(event_id="a", user_id="  spaced  ", timestamp=1767265200000),
        ev(event_id="z"),
        ev(event_id=MISSING),
        ev(type="purchase", metadata={"price": "1.50"}, event_id="p"),
        [1, 2],
    ]
    before = copy.deepcopy(items)
    decide(items)
    assert items == before
    assert items[1]["user_id"] == "  spaced  "  # not stripped in place


def test_raw_lines_are_not_mutated() -> None:
    items: list[Any] = [
        b'{"event_id":"b","user_id":"u","type":"click","timestamp":"2026-01-01T11:00:00Z"}',
        bytearray(b'{"event_id":"a","user_id":"u","type":"click","timestamp":1767265200000}'),
        '{"event_id":"c"}',
        b"garbage",
    ]
    before = copy.deepcopy(items)
    decision = decide(items)
    assert items == before
    assert [o.outcome for o in decision.outcomes] == [
        OutcomeKind.APPLIED,
        OutcomeKind.APPLIED,
        OutcomeKind.REJECTED,
        OutcomeKind.REJECTED,
    ]


# -- activity tracking first --------------------------------------------------------------
def test_last_seen_recorded_for_applied_event() -> None:
    decision = decide([ev()])
    assert decision.outcomes[0].outcome is OutcomeKind.APPLIED
    assert decision.last_seen == {"u1": HOUR_AGO_US}


def test_last_seen_recorded_for_duplicate_event() -> None:
    decision = decide([ev(timestamp="2026-01-01T11:59:00Z")], {"e1": "other-hash"})
    assert decision.outcomes[0].outcome is OutcomeKind.DUPLICATE
    assert decision.applied == []
    assert decision.last_seen == {"u1": RA_US - 60 * 1_000_000}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ev(type="Bad Type"), RejectReason.INVALID_TYPE),
        (ev(event_id=MISSING), RejectReason.MISSING_EVENT_ID),
        (ev(event_id=7), RejectReason.INVALID_EVENT_ID),
        (ev(type="purchase"), RejectReason.INVALID_PRICE),
        (ev(metadata=[1]), RejectReason.INVALID_METADATA),
    ],
)
def test_last_seen_recorded_for_rejected_event(event: dict[str, Any], reason: RejectReason) -> None:
    decision = decide([event])
    assert decision.outcomes[0].reason is reason
    assert decision.last_seen == {"u1": HOUR_AGO_US}


def test_last_seen_uses_received_at_when_timestamp_invalid_or_missing() -> None:
    for ts in ("yesterday", MISSING, None, 1.5, "2026-01-01T11:00:00"):
        decision = decide([ev(timestamp=ts)])
        assert decision.last_seen == {"u1": RA_US}, ts


def test_last_seen_uses_received_at_when_timestamp_beyond_skew() -> None:
    decision = decide([ev(timestamp="2026-01-01T12:05:00.001Z")])
    assert decision.outcomes[0].reason is RejectReason.TIMESTAMP_IN_FUTURE
    assert decision.last_seen == {"u1": RA_US}


def test_last_seen_uses_timestamp_within_skew() -> None:
    decision = decide([ev(timestamp="2026-01-01T12:05:00Z")])
    assert decision.outcomes[0].outcome is OutcomeKind.APPLIED
    assert decision.last_seen == {"u1": RA_US + SKEW_US}


def test_last_seen_is_max_over_out_of_order_events() -> None:
    decision = decide(
        [
            ev(event_id="late", timestamp="2026-01-01T11:50:00Z"),
            ev(event_id="early", timestamp="2026-01-01T09:00:00Z"),
            ev(event_id="bad", timestamp="2026-01-01T10:00:00Z", type="?"),
        ]
    )
    assert decision.last_seen == {"u1": RA_US - 10 * 60 * 1_000_000}


def test_last_seen_recorded_for_timestamp_before_1970() -> None:
    # A regression: a -1 sentinel dropped negative timestamps and the apply then crashed.
    decision = decide([ev(timestamp="1969-12-31T23:59:59Z")])
    assert decision.outcomes[0].outcome is OutcomeKind.APPLIED
    assert decision.last_seen == {"u1": -1_000_000}


@pytest.mark.parametrize(
    "user_id",
    [MISSING, None, "", "   ", "\t\n", "x" * 129, 1.5, True, [], {}, "a\x00b", "\ud800", 10**200],
    ids=repr,
)
def test_no_user_state_for_unusable_user_id(user_id: Any) -> None:
    decision = decide([ev(user_id=user_id)])
    assert decision.last_seen == {}
    assert decision.outcomes[0].user_id is None
    assert decision.outcomes[0].reason in (
        RejectReason.MISSING_USER_ID,
        RejectReason.INVALID_USER_ID,
    )


def test_empty_user_id_rejected_as_missing_without_state() -> None:
    decision = decide([ev(user_id="")])
    assert decision.outcomes[0].reason is RejectReason.MISSING_USER_ID
    assert decision.last_seen == {} and decision.applied == []


def test_int_user_id_normalised_to_decimal_string() -> None:
    decision = decide([ev(user_id=42), ev(event_id="e2", user_id="42")])
    assert [o.user_id for o in decision.outcomes] == ["42", "42"]
    assert [a.user_id for a in decision.applied] == ["42", "42"]
    assert list(decision.last_seen) == ["42"]


def test_string_user_id_stripped() -> None:
    decision = decide([ev(user_id="  u1 ")])
    assert decision.applied[0].user_id == "u1"
    assert decision.last_seen == {"u1": HOUR_AGO_US}


def test_user_id_of_128_chars_is_usable() -> None:
    decision = decide([ev(user_id="u" * 128)])
    assert decision.outcomes[0].outcome is OutcomeKind.APPLIED


def test_normalize_user_id_rule() -> None:
    assert normalize_user_id(7) == "7"
    assert normalize_user_id(-7) == "-7"
    assert normalize_user_id(" a ") == "a"
    assert normalize_user_id(False) is None
    assert normalize_user_id(10**128) is None  # 129 digits
    assert normalize_user_id(10**127) == "1" + "0" * 127
    assert normalize_user_id(-(10**127)) is None  # 129 chars with the sign
    assert normalize_user_id(10**128 - 1) == "9" * 128


# -- dedupe ---------------------------------------------------------------------------------
def test_duplicate_of_event_applied_in_store() -> None:
    event = ev()
    decision = decide([event], {"e1": content_hash(event)})
    assert decision.outcomes[0].outcome is OutcomeKind.DUPLICATE
    assert decision.outcomes[0].detail is None
    assert decision.applied == []


def test_duplicate_of_event_applied_earlier_in_chunk() -> None:
    decision = decide([ev(), ev(event_id="e2"), ev()])
    assert [o.outcome for o in decision.outcomes] == [
        OutcomeKind.APPLIED,
        OutcomeKind.APPLIED,
        OutcomeKind.DUPLICATE,
    ]
    assert [a.event_id for a in decision.applied] == ["e1", "e2"]


def test_duplicate_with_different_content_says_so() -> None:
    decision = decide([ev(), ev(type="view")])
    assert decision.outcomes[1].outcome is OutcomeKind.DUPLICATE
    assert decision.outcomes[1].detail is not None
    assert "differs" in decision.outcomes[1].detail
    stored = decide([ev(type="view")], {"e1": content_hash(ev())})
    assert stored.outcomes[0].detail is not None and "differs" in stored.outcomes[0].detail


def test_duplicate_check_comes_before_validation() -> None:
    # Step 4 before step 5: a resend of an applied id with bad content applies nothing.
    decision = decide([ev(type="NOT VALID")], {"e1": "h"})
    assert decision.outcomes[0].outcome is OutcomeKind.DUPLICATE
    assert decision.outcomes[0].reason is None


def test_rejected_event_id_does_not_block_corrected_retry_in_same_chunk() -> None:
    decision = decide([ev(type="purchase"), ev(type="purchase", metadata={"price": 9.5})])
    assert decision.outcomes[0].reason is RejectReason.INVALID_PRICE
    assert decision.outcomes[1].outcome is OutcomeKind.APPLIED
    assert decision.applied[0].price == 9.5


def test_duplicate_of_rejected_event_is_not_a_duplicate() -> None:
    decision = decide([ev(type="?"), ev(type="?")])
    assert [o.outcome for o in decision.outcomes] == [OutcomeKind.REJECTED] * 2
    assert [o.reason for o in decision.outcomes] == [RejectReason.INVALID_TYPE] * 2


def test_event_ids_lists_string_ids_only() -> None:
    values = [parse_item(i) for i in [ev(), ev(event_id=3), "x", ev(event_id="e2"), [1]]]
    assert Processor.event_ids(values) == ["e1", "e2"]


# -- every rejection code --------------------------------------------------------------------
def test_malformed_json() -> None:
    decision = decide([b'{"event_id": "e1", '])
    assert decision.outcomes[0].reason is RejectReason.MALFORMED_JSON
    assert decision.outcomes[0].detail


@pytest.mark.parametrize("item", ["[1, 2]", "42", "null", '"text"', "true", ParsedValue([])])
def test_not_an_object(item: Any) -> None:
    assert reason_of(item) is RejectReason.NOT_AN_OBJECT


def test_missing_event_id() -> None:
    assert reason_of(ev(event_id=MISSING)) is RejectReason.MISSING_EVENT_ID
    assert reason_of(ev(event_id=None)) is RejectReason.MISSING_EVENT_ID


@pytest.mark.parametrize(
    "event_id", ["", "  ", "x" * 129, 5, 1.0, True, ["e1"], {"id": 1}, "e\x00", "e\n1", "\ud800"]
)
def test_invalid_event_id(event_id: Any) -> None:
    assert reason_of(ev(event_id=event_id)) is RejectReason.INVALID_EVENT_ID


def test_event_id_of_128_printable_chars_is_valid() -> None:
    assert reason_of(ev(event_id="é" * 128)) is None


def test_missing_user_id() -> None:
    assert reason_of(ev(user_id=MISSING)) is RejectReason.MISSING_USER_ID
    assert reason_of(ev(user_id=" ")) is RejectReason.MISSING_USER_ID


@pytest.mark.parametrize("user_id", ["x" * 129, 2.5, False, ["u"], "u\x00", 10**129])
def test_invalid_user_id(user_id: Any) -> None:
    assert reason_of(ev(user_id=user_id)) is RejectReason.INVALID_USER_ID


def test_missing_type() -> None:
    assert reason_of(ev(type=MISSING)) is RejectReason.MISSING_TYPE


@pytest.mark.parametrize("event_type", ["", "Click", "1click", "a" * 33, 3, ["click"], "cl ick"])
def test_invalid_type(event_type: Any) -> None:
    assert reason_of(ev(type=event_type)) is RejectReason.INVALID_TYPE


@pytest.mark.parametrize("event_type", ["a", "a" * 32, "page.view", "add-to_cart9"])
def test_valid_types(event_type: str) -> None:
    assert reason_of(ev(type=event_type)) is None


def test_unknown_type_with_allowlist() -> None:
    allow = frozenset({"click", "view"})
    assert reason_of(ev(type="signup"), allowlist=allow) is RejectReason.UNKNOWN_TYPE
    assert reason_of(ev(type="view"), allowlist=allow) is None
    assert reason_of(ev(type="signup")) is None  # no allowlist: any valid type


def test_missing_timestamp() -> None:
    assert reason_of(ev(timestamp=MISSING)) is RejectReason.MISSING_TIMESTAMP
    assert reason_of(ev(timestamp=None)) is RejectReason.MISSING_TIMESTAMP


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-01-01T11:00:00",  # naive
        "2026-01-01",
        "11:00:00Z",
        "2026-01-01T11:00Z",
        "2026-13-01T11:00:00Z",
        "2026-01-01T11:00:00+2:00",
        "yesterday",
        "",
        1.5e12,
        True,
        -1,
        "1767265200000",
        [2026],
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "２０２６-01-01T11:00:00Z",  # non-ASCII digits
    ],
    ids=repr,
)
def test_invalid_timestamp(timestamp: Any) -> None:
    assert reason_of(ev(timestamp=timestamp)) is RejectReason.INVALID_TIMESTAMP


def test_timestamp_in_future_beyond_skew() -> None:
    late = "2026-01-01T12:05:00.001Z"
    assert reason_of(ev(timestamp=late)) is RejectReason.TIMESTAMP_IN_FUTURE
    ms = (RA_US + SKEW_US) // 1000 + 1
    assert reason_of(ev(timestamp=ms)) is RejectReason.TIMESTAMP_IN_FUTURE


def test_timestamp_within_skew_is_applied() -> None:
    assert reason_of(ev(timestamp="2026-01-01T12:05:00Z")) is None
    assert reason_of(ev(timestamp=(RA_US + SKEW_US) // 1000)) is None


def test_skew_is_configurable() -> None:
    ts = "2026-01-01T12:00:01Z"
    assert reason_of(ev(timestamp=ts), skew_us=0) is RejectReason.TIMESTAMP_IN_FUTURE
    assert reason_of(ev(timestamp="2026-01-01T12:00:00Z"), skew_us=0) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T11:00:00Z", HOUR_AGO_US),
        ("2026-01-01T13:00:00+02:00", HOUR_AGO_US),
        ("2026-01-01T06:00:00-05:00", HOUR_AGO_US),
        ("2026-01-01t11:00:00z", HOUR_AGO_US),
        ("2026-01-01 11:00:00Z", HOUR_AGO_US),
        ("2026-01-01T11:00:00.250Z", HOUR_AGO_US + 250_000),
        ("2026-01-01T11:00:00.123456789+00:00", HOUR_AGO_US + 123_456),
    ],
)
def test_rfc3339_with_offsets(text: str, expected: int) -> None:
    assert parse_timestamp_us(text) == expected
    decision = decide([ev(timestamp=text)])
    assert decision.applied[0].timestamp_us == expected


def test_epoch_milliseconds() -> None:
    ms = HOUR_AGO_US // 1000
    decision = decide([ev(timestamp=ms)])
    assert decision.applied[0].timestamp_us == HOUR_AGO_US
    assert parse_timestamp_us(0) == 0


@pytest.mark.parametrize(
    "metadata", [[1], "text", 5, True], ids=["array", "string", "number", "boolean"]
)
def test_invalid_metadata_not_an_object(metadata: Any) -> None:
    assert reason_of(ev(metadata=metadata)) is RejectReason.INVALID_METADATA


def _nested(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` levels (``{}`` is depth 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_metadata_depth_16_is_valid_17_is_not() -> None:
    assert reason_of(ev(metadata=_nested(16))) is None
    assert reason_of(ev(metadata=_nested(17))) is RejectReason.INVALID_METADATA
    assert reason_of(ev(metadata={"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]})) is (
        RejectReason.INVALID_METADATA
    )


def test_metadata_depth_5000_is_invalid() -> None:
    assert reason_of(ev(metadata=_nested(5000))) is RejectReason.INVALID_METADATA


def test_duplicate_with_metadata_depth_5000_does_not_crash() -> None:
    # A regression: the content digest fell back to repr(), which recursed too deep.
    decision = decide([ev(), ev(metadata=_nested(5000))])
    assert decision.outcomes[1].outcome is OutcomeKind.DUPLICATE
    assert decision.outcomes[1].detail is not None


def test_metadata_size_limit() -> None:
    ok = {"s": "x" * (64 * 1024 - 20)}
    assert reason_of(ev(metadata=ok)) is None
    assert reason_of(ev(metadata={"s": "x" * (64 * 1024)})) is RejectReason.INVALID_METADATA


def test_metadata_with_nul_is_invalid() -> None:
    assert reason_of(ev(metadata={"k": "a\x00b"})) is RejectReason.INVALID_METADATA
    assert reason_of(ev(metadata={"k\x00": 1})) is RejectReason.INVALID_METADATA
    # A literal backslash followed by u0000 is not a NUL.
    assert reason_of(ev(metadata={"k": "\\u0000"})) is None


def test_metadata_not_serialisable_is_invalid() -> None:
    assert reason_of(ev(metadata={"k": "\ud800"})) is RejectReason.INVALID_METADATA
    assert reason_of(ev(metadata={"k": {1, 2}})) is RejectReason.INVALID_METADATA


@pytest.mark.parametrize(
    "metadata",
    [
        {"price": float("nan")},
        {"price": float("inf")},
        {"a": [1, {"b": -float("inf")}]},
        {"n": None, "x": float("nan")},
    ],
    ids=repr,
)
def test_metadata_with_nan_or_infinity_is_invalid(metadata: dict[str, Any]) -> None:
    # A regression: orjson wrote NaN as null, so the event applied with changed metadata.
    decision = decide([ev(type="purchase", metadata=metadata)])
    assert decision.outcomes[0].reason is RejectReason.INVALID_METADATA
    assert decision.outcomes[0].detail == "metadata holds NaN or Infinity"


def test_metadata_with_null_is_valid() -> None:
    decision = decide([ev(metadata={"n": None, "l": [None, 1.5]})])
    assert json.loads(decision.applied[0].metadata_json) == {"n": None, "l": [None, 1.5]}


def test_null_metadata_is_an_empty_object() -> None:
    decision = decide([ev(metadata=None)])
    assert decision.applied[0].metadata_json == b"{}"


@pytest.mark.parametrize(
    ("metadata", "price"),
    [
        ({"price": 19.99}, 19.99),
        ({"price": 0}, 0.0),
        ({"price": "19.99"}, 19.99),
        ({"price": "7"}, 7.0),
        ({"price": 10**15}, 1e15),
        ({"price": 1e300}, 1e300),
    ],
)
def test_valid_price(metadata: dict[str, Any], price: float) -> None:
    decision = decide([ev(type="purchase", metadata=metadata)])
    assert decision.applied[0].price == price


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {},
        {"price": None},
        {"price": -1},
        {"price": "-1"},
        {"price": "N/A"},
        {"price": ""},
        {"price": "1e5"},
        {"price": True},
        {"price": [1]},
    ],
    ids=repr,
)
def test_invalid_price(metadata: Any) -> None:
    assert reason_of(ev(type="purchase", metadata=metadata)) is RejectReason.INVALID_PRICE


def test_huge_integer_price_from_library_is_invalid_price() -> None:
    # The metadata is stored exactly (integers past 64 bits included); the price rule then
    # refuses a price that no float can hold.
    decision = decide([ev(type="purchase", metadata={"price": 10**400})])
    assert decision.outcomes[0].reason is RejectReason.INVALID_PRICE
    assert decision.outcomes[0].detail == "metadata.price is too large"


@pytest.mark.parametrize("as_text", [True, False])
def test_integers_past_64_bits_in_metadata_are_kept_exactly(as_text: bool) -> None:
    big = 123456789012345678901234567890
    event = ev(metadata={"n": big, "z": {"m": -(2**70)}, "a": "x"})
    item = orjson.dumps({**event, "metadata": {}}).replace(
        b'"metadata":{}', b'"metadata":{"n":%d,"z":{"m":%d},"a":"x"}' % (big, -(2**70))
    ) if as_text else event
    decision = decide([item])
    assert decision.outcomes[0].outcome is OutcomeKind.APPLIED
    stored = decision.applied[0].metadata_json
    assert stored == b'{"a":"x","n":%d,"z":{"m":%d}}' % (big, -(2**70))
    assert json.loads(stored)["n"] == big  # not a float


def test_huge_integer_price_from_json_text_is_a_number() -> None:
    text = (
        '{"event_id":"p","user_id":"u","type":"purchase","timestamp":1767265200000,'
        '"metadata":{"price":100000000000000000000000}}'
    )
    decision = decide([text])
    assert decision.applied[0].price == 1e23


def test_price_ignored_for_other_types() -> None:
    decision = decide([ev(type="view", metadata={"price": "N/A"})])
    assert decision.applied[0].price is None


@pytest.mark.parametrize("sequence", [0, -1, "1", 1.0, True, 2**63])
def test_invalid_sequence(sequence: Any) -> None:
    assert reason_of(ev(sequence=sequence)) is RejectReason.INVALID_SEQUENCE


def test_carried_sequence_is_kept() -> None:
    decision = decide([ev(sequence=7), ev(event_id="e2")])
    assert [a.sequence for a in decision.applied] == [7, None]


# -- first failure wins -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ev(event_id=MISSING, user_id=MISSING), RejectReason.MISSING_EVENT_ID),
        (ev(event_id=3, type="?"), RejectReason.INVALID_EVENT_ID),
        (ev(user_id=MISSING, type=MISSING), RejectReason.MISSING_USER_ID),
        (ev(user_id=1.5, type="?"), RejectReason.INVALID_USER_ID),
        (ev(type=MISSING, timestamp=MISSING), RejectReason.MISSING_TYPE),
        (ev(type="?", timestamp="bad"), RejectReason.INVALID_TYPE),
        (ev(type="signup", timestamp="2030-01-01T00:00:00Z"), RejectReason.UNKNOWN_TYPE),
        (ev(timestamp=MISSING, metadata=[]), RejectReason.MISSING_TIMESTAMP),
        (ev(timestamp="bad", metadata=[]), RejectReason.INVALID_TIMESTAMP),
        (ev(timestamp="2030-01-01T00:00:00Z", metadata=[]), RejectReason.TIMESTAMP_IN_FUTURE),
        (ev(type="purchase", metadata=[]), RejectReason.INVALID_METADATA),
        (
            ev(type="purchase", metadata={"price": "x"}, sequence=0),
            RejectReason.INVALID_PRICE,
        ),
    ],
    ids=lambda v: v.value if isinstance(v, RejectReason) else "",
)
def test_first_failure_wins(event: dict[str, Any], expected: RejectReason) -> None:
    allow = frozenset({"click", "purchase"})
    assert reason_of(event, allowlist=allow) is expected


# -- what an applied event carries ------------------------------------------------------------
def test_applied_event_is_normalised() -> None:
    decision = decide(
        [ev(user_id=9, type="purchase", metadata={"price": "2.50", "sku": "x"}, sequence=3)]
    )
    applied = decision.applied[0]
    assert applied.user_id == "9"
    assert applied.type == "purchase"
    assert applied.price == 2.5
    assert applied.sequence == 3
    assert json.loads(applied.metadata_json) == {"price": "2.50", "sku": "x"}
    assert applied.content_hash == content_hash(
        ev(user_id=9, type="purchase", metadata={"price": "2.50", "sku": "x"}, sequence=3)
    )


def test_content_hash_ignores_key_order_and_sees_changes() -> None:
    a = {"event_id": "e", "type": "click", "metadata": {"x": 1, "y": 2}}
    b = {"metadata": {"y": 2, "x": 1}, "type": "click", "event_id": "e"}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({**a, "type": "view"})


# -- parse_item -------------------------------------------------------------------------------
def test_parse_item_kinds() -> None:
    obj = {"a": 1}
    assert parse_item(obj) is obj
    assert parse_item(ParsedValue([1])) == [1]
    assert parse_item('{"a": 1}') == {"a": 1}
    assert parse_item(b'{"a": 1}') == {"a": 1}
    assert parse_item(memoryview(b'{"a": 2}')) == {"a": 2}
    assert isinstance(parse_item(b"{"), Unparsable)
    assert parse_item(42) == 42  # not a JSON object: rejected later as not_an_object


def test_parse_item_huge_integer_user_id_is_exact() -> None:
    # orjson reads it as a float; a 30-digit integer user_id is still a usable id.
    value = parse_item('{"user_id": 123456789012345678901234567890}')
    assert value == {"user_id": 123456789012345678901234567890}
    text = '{"event_id":"e","user_id":123456789012345678901234567890,"type":"click",'
    decision = decide([text + '"timestamp":1767265200000}'])
    assert decision.applied[0].user_id == "123456789012345678901234567890"


def test_parse_item_float_user_id_stays_float() -> None:
    assert parse_item(b'{"user_id": 1.5}') == {"user_id": 1.5}
    assert reason_of('{"event_id":"e","user_id":1.5}') is RejectReason.INVALID_USER_ID


def test_parse_item_very_deep_json_is_malformed_not_a_crash() -> None:
    text = '{"m":' * 5000 + "1" + "}" * 5000
    assert isinstance(parse_item(text), Unparsable)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '{"p": NaN}'])
def test_parse_item_refuses_nan_and_infinity(text: str) -> None:
    assert isinstance(parse_item(text), Unparsable)


def test_event_ids_leave_out_ids_the_store_cannot_take() -> None:
    # A regression: a lone surrogate in an event_id went to the database lookup and the
    # driver's encoding error failed the whole chunk.
    values = [ev(event_id="ok"), ev(event_id="\ud800"), ev(event_id="a\x00"), ev(event_id="")]
    assert Processor.event_ids(values) == ["ok"]
