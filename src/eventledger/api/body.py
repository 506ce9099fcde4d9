"""Reading and parsing the body of ``POST /v1/events`` within the configured limits.

A body is refused as a whole (nothing is stored) when it cannot be a batch at all: too large,
too many events, wrong content type, not JSON, not an array. Once it is a batch, every event
gets its own outcome in the report, bad ones included.
"""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..processor import ParsedValue, Unparsable, parse_item


class BodyError(Exception):
    """A request body refused as a whole: the HTTP status, an error code and the reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


class BodyKind(enum.Enum):
    ARRAY = "application/json"
    NDJSON = "application/x-ndjson"


_NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)


def body_kind(content_type: str | None) -> BodyKind:
    """The batch format a ``Content-Type`` announces, else a 415 :class:`BodyError`."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return BodyKind.ARRAY
    if media in _NDJSON_TYPES:
        return BodyKind.NDJSON
    shown = media or "none"
    raise BodyError(
        415,
        "unsupported_media_type",
        f"content type {shown!r} is not accepted: send a JSON array as application/json "
        "or one event per line as application/x-ndjson",
    )


def _too_large(max_bytes: int) -> BodyError:
    return BodyError(413, "body_too_large", f"the body exceeds the limit of {max_bytes} bytes")


def _too_many(max_events: int) -> BodyError:
    return BodyError(413, "too_many_events", f"the batch exceeds the limit of {max_events} events")


async def read_body(
    chunks: AsyncIterator[bytes],
    *,
    kind: BodyKind,
    content_length: str | None,
    max_bytes: int,
    max_events: int,
) -> bytes:
    """The whole body, refused with 413 as soon as it passes a limit while being read."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BodyError(400, "bad_content_length", "Content-Length is not a number") from None
        if declared > max_bytes:
            raise _too_large(max_bytes)
    parts: list[bytes] = []
    size = 0
    lines = 0
    tail = b""
    async for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        parts.append(chunk)
        if kind is BodyKind.NDJSON:
            # Count the non-blank lines completed so far (the last piece may go on).
            pieces = (tail + chunk).split(b"\n")
            tail = pieces.pop()
            lines += sum(1 for p in pieces if p.strip())
            if lines > max_events:
                raise _too_many(max_events)
    if kind is BodyKind.NDJSON and tail.strip() and lines + 1 > max_events:
        raise _too_many(max_events)
    return b"".join(parts)


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_batch(body: bytes, kind: BodyKind, *, max_events: int) -> list[Any]:
    """The events of a body, ready for :meth:`eventledger.Ledger.process`.

    CPU-bound for large bodies: call it off the event loop.
    """
    if not body.strip():
        raise BodyError(400, "empty_body", "the body is empty: send at least one event")
    if kind is BodyKind.ARRAY:
        return _parse_array(body, max_events)
    return _parse_ndjson(body)


def _parse_array(body: bytes, max_events: int) -> list[Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting deeper than 1024; the stdlib parser is the second opinion
        # (NaN and Infinity stay refused).
        value = _stdlib_loads(body, str(exc))
    else:
        # orjson reads integers past 64 bits as floats; an integer user_id of 20+ digits is
        # usable (SPEC §2), so such a batch is read again exactly, as parse_item does.
        if type(value) is list and any(
            type(v) is dict and type(v.get("user_id")) is float for v in value
        ):
            value = _stdlib_loads(body, "")
    if not isinstance(value, list):
        hint = " (wrap a single event in [ ])" if isinstance(value, dict) else ""
        raise BodyError(
            400,
            "not_an_array",
            f"an application/json body must be a JSON array of events, got a JSON "
            f"{_json_kind(value)}{hint}",
        )
    if not value:
        raise BodyError(400, "empty_batch", "the JSON array holds no events")
    if len(value) > max_events:
        raise _too_many(max_events)
    # Wrapped so that a string element is taken as a (non-object) value, not as JSON text.
    return [ParsedValue(v) for v in value]


def _stdlib_loads(body: bytes, first_error: str) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        why = first_error or str(exc)
        raise BodyError(400, "malformed_json", f"the body is not valid JSON: {why}") from None


def _parse_ndjson(body: bytes) -> list[Any]:
    items: list[Any] = []
    parsed = 0
    first_error: str | None = None
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        value = parse_item(line)
        if isinstance(value, Unparsable):
            first_error = first_error or value.detail
            items.append(value)
        else:
            parsed += 1
            items.append(ParsedValue(value))
    if not parsed:
        raise BodyError(
            400,
            "malformed_json",
            f"no line of the NDJSON body is valid JSON (first line: {first_error})",
        )
    return items
