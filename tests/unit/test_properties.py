"""Properties of the pure processor (hypothesis): no crash on any JSON value, chunking does
not change decisions, last_seen_at is the max of the candidates, time text round-trips."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventledger.model import OutcomeKind
from eventledger.processor import Processor, content_hash, parse_item
from eventledger.timeutil import MAX_EPOCH_MS, MIN_US, format_us, parse_rfc3339_us

RA_US = 1_767_268_800_000_000  # 2026-01-01T12:00:00Z
SKEW_US = 5 * 60 * 1_000_000
FAST = settings(max_examples=150, deadline=None)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    # orjson reads integers outside 64 bits as floats (only user_id is re-read exactly).
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
offsets_us = st.integers(min_value=-(10**10), max_value=10 * 60 * 1_000_000)


def _rfc3339(us: int, tz: int) -> str:
    dt = datetime.fromtimestamp(us / 1e6, tz=UTC).astimezone(timezone(timedelta(minutes=tz)))
    return dt.isoformat()


timestamps = st.one_of(
    st.builds(lambda off, tz: _rfc3339(RA_US + off, tz), offsets_us, st.sampled_from([0, 90])),
    st.builds(lambda off: (RA_US + off) // 1000, offsets_us),
    json_values,
)
events = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.sampled_from(["a", "b", "c", "d"]), json_values),
        "user_id": st.one_of(st.sampled_from(["u1", " u1", "u2", 5, "5", "", " "]), json_values),
        "type": st.one_of(st.sampled_from(["click", "view", "purchase", "X"]), json_values),
        "timestamp": timestamps,
        "metadata": st.one_of(
            st.builds(lambda p: {"price": p}, json_scalars),
            st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            json_values,
        ),
        "sequence": st.one_of(st.integers(-2, 5), json_values),
    },
)
items = st.one_of(
    events,
    events.map(lambda e: json.dumps(e).encode()),
    json_values,
    json_values.map(json.dumps),
    st.binary(max_size=20),
    st.text(max_size=20),
)


def decide_in_chunks(values: list[Any], size: int) -> list[Any]:
    """Decide a batch chunk by chunk, with a dict standing in for the store's applied ids."""
    store: dict[str, str] = {}
    processor = Processor(received_at_us=RA_US)
    outcomes = []
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        known: Mapping[str, str] = {i: store[i] for i in Processor.event_ids(chunk) if i in store}
        decision = processor.decide_chunk(chunk, known, start)
        for applied in decision.applied:
            store[applied.event_id] = applied.content_hash
        outcomes.extend(decision.outcomes)
    return outcomes


@FAST
@given(batch=st.lists(items, max_size=20))
def test_every_item_gets_exactly_one_outcome_in_order(batch: list[Any]) -> None:
    before = copy.deepcopy(batch)
    values = [parse_item(i) for i in batch]
    decision = Processor(received_at_us=RA_US).decide_chunk(values, {}, 0)
    assert batch == before
    assert [o.index for o in decision.outcomes] == list(range(len(batch)))
    for o in decision.outcomes:
        assert (o.reason is None) == (o.outcome is not OutcomeKind.REJECTED)
    applied = [o.index for o in decision.outcomes if o.outcome is OutcomeKind.APPLIED]
    assert [a.index for a in decision.applied] == applied
    ids = [a.event_id for a in decision.applied]
    assert len(ids) == len(set(ids))  # never applied twice


@FAST
@given(batch=st.lists(items, max_size=20), size=st.integers(1, 6))
def test_chunking_does_not_change_decisions(batch: list[Any], size: int) -> None:
    values = [parse_item(i) for i in batch]
    assert decide_in_chunks(values, size) == decide_in_chunks(values, len(values) or 1)


@FAST
@given(batch=st.lists(events, max_size=20))
def test_last_seen_is_the_max_candidate_of_usable_user_ids(batch: list[Any]) -> None:
    decision = Processor(received_at_us=RA_US).decide_chunk(batch, {}, 0)
    expected: dict[str, int] = {}
    for event, outcome in zip(batch, decision.outcomes, strict=True):
        if outcome.user_id is None:
            continue
        ts = _independent_ts(event.get("timestamp"))
        cand = ts if ts is not None and ts <= RA_US + SKEW_US else RA_US
        expected[outcome.user_id] = max(expected.get(outcome.user_id, cand), cand)
    assert decision.last_seen == expected


def _independent_ts(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1000 if 0 <= value <= MAX_EPOCH_MS else None
    if isinstance(value, str) and "T" in value and len(value) >= 20:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None
        delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return None


@FAST
@given(us=st.integers(min_value=MIN_US, max_value=MAX_EPOCH_MS * 1000 + 999))
def test_format_and_parse_round_trip(us: int) -> None:
    text = format_us(us)
    assert text is not None
    assert parse_rfc3339_us(text) == us


@FAST
@given(event=st.dictionaries(st.text(max_size=5), json_values, max_size=6))
def test_content_hash_ignores_key_order(event: dict[str, Any]) -> None:
    reordered = dict(reversed(list(event.items())))
    assert content_hash(event) == content_hash(reordered)


@FAST
@given(value=json_values)
def test_parse_item_reads_any_json_text(value: Any) -> None:
    text = json.dumps(value)
    assert parse_item(text) == value
    assert parse_item(text.encode()) == value
