"""Unit tests of the API's pure parts: body reading and parsing, configuration, bind check."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventledger.api.body import BodyError, BodyKind, body_kind, parse_batch, read_body
from eventledger.api.config import ApiConfig, Role, check_bind, is_loopback_host
from eventledger.errors import ConfigError
from eventledger.processor import ParsedValue, Unparsable


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", BodyKind.ARRAY),
        ("Application/JSON; charset=utf-8", BodyKind.ARRAY),
        ("application/x-ndjson", BodyKind.NDJSON),
        ("application/jsonl", BodyKind.NDJSON),
    ],
)
def test_body_kind(content_type: str, kind: BodyKind) -> None:
    assert body_kind(content_type) is kind


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/xml", "json"])
def test_body_kind_refuses_others_with_415(content_type: str | None) -> None:
    with pytest.raises(BodyError) as info:
        body_kind(content_type)
    assert info.value.status == 415 and "application/x-ndjson" in info.value.reason


async def test_read_body_joins_chunks_within_limits() -> None:
    body = await read_body(
        chunks(b"[1,", b"", b"2]"),
        kind=BodyKind.ARRAY,
        content_length=None,
        max_bytes=5,
        max_events=10,
    )
    assert body == b"[1,2]"


async def test_read_body_stops_at_the_byte_limit_without_reading_the_rest() -> None:
    read: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for i in range(1000):
            read.append(i)
            yield b"x" * 100

    with pytest.raises(BodyError) as info:
        await read_body(
            endless(), kind=BodyKind.ARRAY, content_length=None, max_bytes=1000, max_events=10
        )
    assert info.value.status == 413 and info.value.code == "body_too_large"
    assert len(read) == 11  # stopped at the first chunk past the limit


async def test_read_body_refuses_a_declared_length_before_reading() -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"x"

    with pytest.raises(BodyError) as info:
        await read_body(
            body(), kind=BodyKind.ARRAY, content_length="1001", max_bytes=1000, max_events=10
        )
    assert info.value.status == 413 and not read
    with pytest.raises(BodyError) as bad:
        await read_body(
            body(), kind=BodyKind.ARRAY, content_length="12x", max_bytes=1000, max_events=10
        )
    assert bad.value.status == 400


async def test_read_body_counts_ndjson_lines_across_chunks() -> None:
    # Three events split over chunk boundaries, plus blank lines that are not events.
    parts = (b'{"a":1}\n\n{"a"', b':2}\n  \n{"a":3}')
    body = await read_body(
        chunks(*parts), kind=BodyKind.NDJSON, content_length=None, max_bytes=999, max_events=3
    )
    assert body.count(b"{") == 3
    with pytest.raises(BodyError) as info:
        await read_body(
            chunks(*parts), kind=BodyKind.NDJSON, content_length=None, max_bytes=999, max_events=2
        )
    assert info.value.code == "too_many_events"


def test_parse_array_wraps_values_so_strings_stay_strings() -> None:
    items = parse_batch(b'[{"event_id": "x"}, "{\\"event_id\\": 1}", 3]', BodyKind.ARRAY,
                        max_events=10)  # fmt: skip
    assert items == [ParsedValue({"event_id": "x"}), ParsedValue('{"event_id": 1}'), ParsedValue(3)]


def test_parse_array_reads_integer_user_ids_beyond_64_bits_exactly() -> None:
    body = b'[{"user_id": 123456789012345678901234567890}, {"user_id": 1.5}]'
    items = parse_batch(body, BodyKind.ARRAY, max_events=2)
    assert items == [
        ParsedValue({"user_id": 123456789012345678901234567890}),
        ParsedValue({"user_id": 1.5}),
    ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"nope", "malformed_json"),
        (b"[1, 2", "malformed_json"),
        (b"[NaN]", "malformed_json"),
        (b"[" * 5000 + b"]" * 5000, "malformed_json"),
        (b'{"event_id": "x"}', "not_an_array"),
        (b"null", "not_an_array"),
        (b"[]", "empty_batch"),
        (b"  ", "empty_body"),
        (b"\xff\xfe[]", "malformed_json"),
    ],
)
def test_parse_array_refuses_non_batches(body: bytes, code: str) -> None:
    with pytest.raises(BodyError) as info:
        parse_batch(body, BodyKind.ARRAY, max_events=10)
    assert info.value.code == code and info.value.status == 400


def test_parse_array_counts_events() -> None:
    with pytest.raises(BodyError) as info:
        parse_batch(b"[1, 2, 3]", BodyKind.ARRAY, max_events=2)
    assert info.value.status == 413


def test_parse_ndjson_keeps_bad_lines_as_unparsable() -> None:
    items = parse_batch(b'{"a": 1}\n\nbroken\n[1]\n', BodyKind.NDJSON, max_events=10)
    assert items[0] == ParsedValue({"a": 1})
    assert isinstance(items[1], Unparsable) and items[1].detail
    assert items[2] == ParsedValue([1])
    assert len(items) == 3
    with pytest.raises(BodyError) as info:
        parse_batch(b"broken\nalso broken", BodyKind.NDJSON, max_events=10)
    assert info.value.code == "malformed_json" and "first line" in info.value.reason


def test_config_layers() -> None:
    config = ApiConfig.from_env(
        {"EVENTLEDGER_API_TOKEN": "t", "EVENTLEDGER_API_MAX_EVENTS": "7"},
        max_events=None,
        max_body_bytes=99,
    )
    assert (config.token, config.max_events, config.max_body_bytes) == ("t", 7, 99)
    assert ApiConfig.from_env({}).token is None
    assert ApiConfig.from_env({"EVENTLEDGER_API_TOKEN": ""}).token is None
    with pytest.raises(ConfigError, match="EVENTLEDGER_API_MAX_BODY_BYTES"):
        ApiConfig.from_env({"EVENTLEDGER_API_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ConfigError, match="blank"):
        ApiConfig.from_env({"EVENTLEDGER_API_TOKEN": "   "})
    with pytest.raises(ConfigError):
        ApiConfig(max_events=0)
    assert ApiConfig(role="worker").role is Role.WORKER  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="role"):
        ApiConfig(role="boss")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
     ("example.test", False)],
)  # fmt: skip
def test_bind_check(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    open_api = ApiConfig(role=Role.ALL)
    if loopback:
        check_bind(host, open_api)
    else:
        with pytest.raises(ConfigError, match="EVENTLEDGER_API_TOKEN"):
            check_bind(host, open_api)
    check_bind(host, ApiConfig(role=Role.ALL, token="t"))
    check_bind(host, ApiConfig(role=Role.WORKER))  # serves no API: no data to protect
