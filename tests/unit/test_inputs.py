"""Reading events from streams: NDJSON line by line, a JSON array element by element."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from eventledger import inputs
from eventledger.inputs import iter_events
from eventledger.model import OutcomeKind, RejectReason
from eventledger.processor import ParsedValue, Processor, Unparsable, parse_item

MIB = 1 << 20


def read(data: bytes) -> list[Any]:
    return list(iter_events(io.BytesIO(data)))


def values(items: list[Any]) -> list[Any]:
    """What the processor sees: parsed JSON, or the Unparsable marker's class."""
    out = []
    for item in items:
        value = parse_item(item)
        out.append(Unparsable if isinstance(value, Unparsable) else value)
    return out


@pytest.fixture(params=[1, 2, 3, 5, 7, 16, 64])
def small_reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Tiny read sizes, so every boundary case (cut numbers, cut characters) happens."""
    size = int(request.param)
    monkeypatch.setattr(inputs, "_READ_SIZE", size)
    return size


# -- NDJSON ----------------------------------------------------------------------------------
def test_ndjson_one_event_per_line() -> None:
    assert read(b'{"a":1}\n{"a":2}\n') == [b'{"a":1}', b'{"a":2}']


def test_ndjson_blank_lines_are_not_events() -> None:
    items = read(b'\n{"a":1}\n\n   \n\t\n{"a":2}\n\n')
    assert values(items) == [{"a": 1}, {"a": 2}]


def test_ndjson_crlf_line_ends() -> None:
    items = read(b'{"a":1}\r\n{"a":2}\r\n\r\n')
    assert values(items) == [{"a": 1}, {"a": 2}]


def test_ndjson_last_line_without_newline() -> None:
    assert values(read(b'{"a":1}\n{"a":2}')) == [{"a": 1}, {"a": 2}]


def test_ndjson_malformed_line_is_yielded_for_rejection() -> None:
    items = read(b'{"a":1}\nnot json\n{"a":2}\n')
    assert values(items) == [{"a": 1}, Unparsable, {"a": 2}]


def test_ndjson_empty_input() -> None:
    assert read(b"") == []
    assert read(b"\n\n  \n") == []


def test_ndjson_line_bigger_than_the_read_size() -> None:
    big = "x" * (MIB + 12345)
    data = (
        json.dumps({"a": 1}) + "\n" + json.dumps({"big": big}) + "\n" + json.dumps({"a": 2})
    ).encode()
    assert values(read(data)) == [{"a": 1}, {"big": big}, {"a": 2}]


def test_ndjson_lines_across_small_reads(small_reads: int) -> None:
    events = [{"i": i, "s": "é€😀" * i} for i in range(12)]
    data = "\r\n".join(json.dumps(e, ensure_ascii=False) for e in events).encode()
    assert values(read(data)) == events


def test_ndjson_invalid_utf8_line_is_malformed() -> None:
    items = read(b'{"event_id":"e\xff"}\n{"a":1}\n')
    assert values(items) == [Unparsable, {"a": 1}]


def test_ndjson_leading_bom_is_skipped() -> None:
    assert values(read(b'\xef\xbb\xbf{"a":1}\n{"a":2}\n')) == [{"a": 1}, {"a": 2}]


def test_ndjson_bom_inside_the_stream_is_malformed() -> None:
    items = values(read(b'{"a":1}\n\xef\xbb\xbf{"a":2}\n'))
    assert items == [{"a": 1}, Unparsable]


# -- JSON array ------------------------------------------------------------------------------
def test_array_elements_are_parsed_values() -> None:
    items = read(b' \n [{"a":1}, {"b":[1,2]}, 3, "s", null, [4]]\n')
    assert all(isinstance(i, ParsedValue) for i in items)
    assert values(items) == [{"a": 1}, {"b": [1, 2]}, 3, "s", None, [4]]


def test_array_empty() -> None:
    assert read(b"[]") == []
    assert read(b"  [ \n ]  \n") == []


def test_array_with_leading_bom() -> None:
    assert values(read(b'\xef\xbb\xbf[{"a":1},{"a":2}]')) == [{"a": 1}, {"a": 2}]


def test_array_elements_spanning_reads(small_reads: int) -> None:
    events: list[Any] = [{"i": i, "pad": "p" * (i * 3)} for i in range(10)]
    events += [12345678, -1.5e10, "tail", True, None]
    data = json.dumps(events).encode()
    assert values(read(data)) == events


def test_array_number_cut_at_a_read_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    # A regression: "-1" then ".5e+10" in the next read was taken as -1, then broken.
    data = b"[1234567890123,-1.5e+10,2E3,98765]"
    for size in range(1, len(data) + 1):
        monkeypatch.setattr(inputs, "_READ_SIZE", size)
        assert values(read(data)) == [1234567890123, -1.5e10, 2000.0, 98765], size


def test_array_multibyte_utf8_cut_at_a_read_boundary(small_reads: int) -> None:
    events = [{"event_id": "é€😀中文", "user_id": "ü" * 5}, {"m": "😀" * 7}]
    data = json.dumps(events, ensure_ascii=False).encode()
    assert values(read(data)) == events


def test_array_element_bigger_than_the_read_size() -> None:
    big = "é" * (MIB // 2 + 999)  # > 1 MiB of UTF-8
    data = json.dumps([{"a": 1}, {"big": big}, {"a": 2}], ensure_ascii=False).encode()
    assert values(read(data)) == [{"a": 1}, {"big": big}, {"a": 2}]


def test_array_broken_element_yields_one_malformed_for_the_rest(small_reads: int) -> None:
    items = read(b'[{"a":1}, {"a":2}, {"a": oops}, {"a":4}, {"a":5}]')
    assert values(items) == [{"a": 1}, {"a": 2}, Unparsable]
    bad = items[-1]
    assert isinstance(bad, Unparsable)
    assert "element 2" in bad.detail


def test_array_missing_comma_is_broken() -> None:
    items = read(b'[{"a":1} {"a":2}]')
    assert values(items) == [{"a": 1}, Unparsable]


def test_array_nan_element_is_broken() -> None:
    assert values(read(b'[{"a":1}, NaN, {"a":3}]')) == [{"a": 1}, Unparsable]
    assert values(read(b'[{"p": Infinity}]')) == [Unparsable]


def test_array_truncated_is_one_malformed_outcome() -> None:
    assert values(read(b'[{"a":1}, {"a":2}')) == [{"a": 1}, {"a": 2}, Unparsable]
    assert values(read(b'[{"a":1}, ')) == [{"a": 1}, Unparsable]
    assert values(read(b'[{"a":1}, {"a":')) == [{"a": 1}, Unparsable]
    assert values(read(b"[")) == [Unparsable]


def test_array_trailing_garbage_is_one_malformed_outcome() -> None:
    items = read(b'[{"a":1}] trailing')
    assert values(items) == [{"a": 1}, Unparsable]
    assert items[-1] == b"trailing"


def test_lines_after_the_array_still_count(small_reads: int) -> None:
    # A regression: NDJSON whose first event is an array line lost every later line in one
    # malformed outcome ("unexpected content after the JSON array").
    data = '[1, 2]\n{"e": "é😀"}\r\n\nnot json\n{"e": 2}'.encode()
    assert values(read(data)) == [1, 2, {"e": "é😀"}, Unparsable, {"e": 2}]


def test_array_trailing_whitespace_is_fine() -> None:
    assert values(read(b'[{"a":1}]\n\n  \r\n')) == [{"a": 1}]


def test_array_huge_integer_is_exact() -> None:
    assert values(read(b"[123456789012345678901234567890]")) == [123456789012345678901234567890]


def test_array_invalid_utf8_is_refused_not_replaced(small_reads: int) -> None:
    # A regression: the bytes were decoded with "replace", so an event_id with a bad byte
    # was silently changed to U+FFFD and applied. They must be refused, field by field.
    data = (
        b'[{"event_id":"e\xff1","user_id":"u","type":"click","timestamp":1767265200000},'
        b'{"event_id":"e2","user_id":"u\xc3","type":"click","timestamp":1767265200000},'
        b'{"event_id":"e3","user_id":"u","type":"click","timestamp":1767265200000,'
        b'"metadata":{"k":"\xed\xa0\x80"}},'
        b'{"event_id":"e4","user_id":"u","type":"click","timestamp":1767265200000}]'
    )
    parsed = [parse_item(i) for i in read(data)]
    decision = Processor(received_at_us=1_767_268_800_000_000).decide_chunk(parsed, {}, 0)
    assert [o.reason for o in decision.outcomes] == [
        RejectReason.INVALID_EVENT_ID,
        RejectReason.INVALID_USER_ID,
        RejectReason.INVALID_METADATA,
        None,
    ]
    assert decision.outcomes[3].outcome is OutcomeKind.APPLIED
    assert "\ufffd" not in repr(parsed)


def test_array_deep_nesting_is_one_malformed_outcome_not_a_crash() -> None:
    deep = b"[" + b'{"m":' * 5000 + b"1" + b"}" * 5000 + b"]"
    items = read(deep)
    assert values(items) == [Unparsable]
