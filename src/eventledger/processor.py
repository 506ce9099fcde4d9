"""The pure core of event processing (SPEC §2).

Nothing here opens a file or a connection: the store's knowledge of applied event ids and
the batch's ``received_at`` are passed in, so the decisions can be tested exhaustively and
re-run when a store transaction has to be retried.

A batch is processed in chunks. For a chunk, :func:`parse_item` turns each input item into a
JSON value, the store looks up which of the chunk's event ids are already applied, and
:meth:`Processor.decide_chunk` decides every event's outcome in input order.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard

import orjson

from .model import Outcome, OutcomeKind, RejectReason
from .timeutil import MAX_EPOCH_MS, parse_rfc3339_us

MAX_ID_LENGTH = 128
MAX_METADATA_DEPTH = 16
MAX_METADATA_BYTES = 64 * 1024
MAX_SEQUENCE = 2**63 - 1
DEFAULT_MAX_CLOCK_SKEW_US = 5 * 60 * 1_000_000

TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,31}\Z")
_DECIMAL_STRING = re.compile(r"[0-9]{1,30}(?:\.[0-9]{1,30})?\Z")
# orjson escapes NUL as \u0000; an escaped backslash before "u0000" is not a NUL.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_TOO_DEEP = f"metadata is nested deeper than {MAX_METADATA_DEPTH}"


@dataclass(frozen=True, slots=True)
class ParsedValue:
    """An input item that is already a parsed JSON value (an element of a JSON array)."""

    value: Any


class Unparsable:
    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_item(item: Any) -> Any:
    """The JSON value of one input item, or an ``Unparsable`` marker.

    ``str``/``bytes`` items are raw JSON text; ``ParsedValue`` wraps an already parsed value;
    anything else (a dict from the library API, or another object) is taken as it is.
    """
    if isinstance(item, dict):
        return item
    if isinstance(item, ParsedValue):
        return item.value
    if isinstance(item, (str, bytes, bytearray, memoryview)):
        try:
            value = orjson.loads(item)
        except orjson.JSONDecodeError as exc:
            value, first_error = None, str(exc)
        else:
            # orjson reads integers past 64 bits as floats, silently losing digits. Where that
            # matters — a user_id, or anything in metadata, which is stored and forwarded —
            # the text is read again, exactly, by the stdlib parser. Elsewhere (timestamp,
            # sequence) the float is rejected anyway. Such a float is >= 2**64 ~ 1.8e19, which
            # orjson writes with an exponent of +19 or more: writing the metadata back and
            # looking for that is several times cheaper than scanning every line for a run of
            # 20 digits.
            if type(value) is not dict:
                return value
            metadata = value.get("metadata")
            if type(value.get("user_id")) is not float and (
                not metadata or not _may_hold_big_integers(metadata)
            ):
                return value
            first_error = ""
        # orjson refuses very deep nesting; the stdlib parser is the second opinion for that
        # (NaN and Infinity stay refused: they are not JSON).
        try:
            text = bytes(item).decode("utf-8") if not isinstance(item, str) else item
            return json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError, UnicodeDecodeError):
            return Unparsable(first_error) if first_error else value
    return item


_BIG_EXPONENT = re.compile(rb"[0-9]e\+(?:19|[2-9][0-9]|[1-9][0-9][0-9])")


def _may_hold_big_integers(value: Any) -> bool:
    """Whether an orjson-parsed value holds a float large enough to have been an integer
    past 64 bits (false positives only cost a second, exact parse)."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        return True
    # "+" appears in orjson output only in exponents and strings; one byte is a memchr.
    return b"+" in text and _BIG_EXPONENT.search(text) is not None


def _dumps_big_integers(metadata: dict[str, Any]) -> bytes | None:
    """Canonical JSON of metadata holding integers past 64 bits (which orjson refuses),
    exact, in the same form as orjson's sorted output; None if it cannot be written."""
    try:
        text = json.dumps(
            metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        return None


class AppliedEvent(NamedTuple):
    """An event the processor decided to apply, normalised for storage (a named tuple:
    cheap to build, one per applied event)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    event_id: str
    user_id: str
    type: str
    timestamp_us: int
    metadata_json: bytes
    price: float | None
    sequence: int | None
    content_hash: str


class _Valid(NamedTuple):
    metadata_json: bytes
    price: float | None
    sequence: int | None


@dataclass(slots=True, kw_only=True)
class ChunkDecision:
    """The outcome of every event of a chunk, in input order, and the state changes."""

    outcomes: list[Outcome] = field(default_factory=list)
    applied: list[AppliedEvent] = field(default_factory=list)
    # user_id -> max last_seen_at candidate of the chunk (every event with a usable user_id)
    last_seen: dict[str, int] = field(default_factory=dict)


def content_hash(obj: Mapping[str, Any]) -> str:
    """A digest of an event's content, to tell a retry with changed content from a copy.

    Only events with the same ``event_id`` are ever compared, so the id may stay in the
    digested text (copying the event without it costs more than hashing it).
    """
    try:
        blob = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        try:
            text = repr(sorted(obj.items(), key=lambda kv: str(kv[0])))
        except RecursionError:  # a dict nested deeper than repr goes (library input)
            text = _deep_repr(obj)
        blob = text.encode("utf-8", "replace")
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class _Text(str):
    """Literal text on :func:`_deep_repr`'s work stack."""


def _deep_repr(value: Any) -> str:
    """A repr-like text of a value of any nesting depth, built without recursion."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            parts.append(item)
        elif isinstance(item, (dict, list, tuple)):
            is_dict = isinstance(item, dict)
            pairs: list[tuple[Any, Any]] = (
                sorted(item.items(), key=lambda kv: str(kv[0]))
                if isinstance(item, dict)
                else list(enumerate(item))
            )
            parts.append("{" if is_dict else "[")
            stack.append(_Text("}" if is_dict else "]"))
            for key, sub in reversed(pairs):
                stack.append(_Text(","))
                stack.append(sub)
                stack.append(_Text(repr(key) + ":"))
        else:
            parts.append(repr(item))
    return "".join(parts)


def normalize_user_id(value: Any) -> str | None:
    """The usable form of a ``user_id`` (stripped string or decimal integer), else None."""
    if isinstance(value, str):
        text = value.strip()
        if text and len(text) <= MAX_ID_LENGTH and text.isprintable():
            return text
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        # 10**128 needs 426 bits: beyond 430, skip the costly int->str of a huge number.
        if value.bit_length() > 430:
            return None
        text = str(value)
        return text if len(text) <= MAX_ID_LENGTH else None
    return None


def _user_id_problem(value: Any) -> tuple[RejectReason, str]:
    if value is None:
        return RejectReason.MISSING_USER_ID, "user_id is missing"
    if isinstance(value, str):
        if not value.strip():
            return RejectReason.MISSING_USER_ID, "user_id is empty"
        if len(value.strip()) > MAX_ID_LENGTH:
            return RejectReason.INVALID_USER_ID, f"user_id is longer than {MAX_ID_LENGTH}"
        return RejectReason.INVALID_USER_ID, "user_id contains non-printable characters"
    if isinstance(value, int) and not isinstance(value, bool):
        return RejectReason.INVALID_USER_ID, f"user_id is longer than {MAX_ID_LENGTH} digits"
    return (
        RejectReason.INVALID_USER_ID,
        f"user_id must be a string or an integer, not {_kind(value)}",
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_valid_event_id(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a usable event_id (the rule :func:`_event_id_problem` explains)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isprintable()
        and not value.isspace()
    )


def _event_id_problem(value: Any) -> tuple[RejectReason, str] | None:
    if value is None:
        return RejectReason.MISSING_EVENT_ID, "event_id is missing"
    if not isinstance(value, str):
        return RejectReason.INVALID_EVENT_ID, f"event_id must be a string, not {_kind(value)}"
    if not value.strip():
        return RejectReason.INVALID_EVENT_ID, "event_id is blank"
    if len(value) > MAX_ID_LENGTH:
        return RejectReason.INVALID_EVENT_ID, f"event_id is longer than {MAX_ID_LENGTH}"
    if not value.isprintable():
        return RejectReason.INVALID_EVENT_ID, "event_id contains non-printable characters"
    return None


def parse_timestamp_us(value: Any) -> int | None:
    """Microseconds since the epoch of an RFC 3339 string or integer epoch milliseconds."""
    if isinstance(value, str):
        return parse_rfc3339_us(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_EPOCH_MS:
            return value * 1000
    return None


def _has_non_finite(metadata: dict[str, Any]) -> bool:
    """Whether a float NaN or infinity is anywhere in the metadata."""
    stack: list[Any] = [metadata]
    while stack:
        obj = stack.pop()
        for value in obj.values() if isinstance(obj, dict) else obj:
            if isinstance(value, float) and not math.isfinite(value):
                return True
            if isinstance(value, (dict, list)):
                stack.append(value)
    return False


def _metadata_depth_ok(metadata: dict[str, Any]) -> bool:
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        obj, depth = stack.pop()
        values = obj.values() if isinstance(obj, dict) else obj
        for value in values:
            if isinstance(value, (dict, list)):
                if depth + 1 > MAX_METADATA_DEPTH:
                    return False
                stack.append((value, depth + 1))
    return True


def _price_of(metadata: dict[str, Any]) -> float | str:
    """The price of a purchase as a float, or the reason it is invalid."""
    if "price" not in metadata:
        return "a purchase needs metadata.price"
    price = metadata["price"]
    if isinstance(price, bool) or price is None:
        return f"metadata.price must be a number or a decimal string, not {_kind(price)}"
    if isinstance(price, int):
        try:
            value = float(price)
        except OverflowError:
            return "metadata.price is too large"
    elif isinstance(price, float):
        value = price
    elif isinstance(price, str):
        if not _DECIMAL_STRING.match(price):
            return "metadata.price string is not a decimal number"
        value = float(price)
    else:
        return f"metadata.price must be a number or a decimal string, not {_kind(price)}"
    if not math.isfinite(value):
        return "metadata.price must be finite"
    if value < 0:
        return "metadata.price must not be negative"
    return value


class Processor:
    """Decides the outcome of each event of a batch (SPEC §2), without any I/O."""

    def __init__(
        self,
        *,
        received_at_us: int,
        max_clock_skew_us: int = DEFAULT_MAX_CLOCK_SKEW_US,
        type_allowlist: frozenset[str] | None = None,
    ) -> None:
        self.received_at_us = received_at_us
        self.latest_allowed_us = received_at_us + max_clock_skew_us
        self.type_allowlist = type_allowlist

    @staticmethod
    def event_ids(values: Sequence[Any]) -> list[str]:
        """The valid event ids of a chunk's parsed values (what the store must look up).

        Invalid ids are rejected without a lookup; a lone surrogate or a NUL in one would
        make the database driver fail the whole chunk.
        """
        ids: list[str] = []
        for value in values:
            if isinstance(value, dict):
                event_id = value.get("event_id")
                if is_valid_event_id(event_id):
                    ids.append(event_id)
        return ids

    def decide_chunk(
        self, values: Sequence[Any], applied_in_store: Mapping[str, str], first_index: int
    ) -> ChunkDecision:
        """Decide every event of a chunk, in order.

        ``values`` are the results of :func:`parse_item`; ``applied_in_store`` maps each
        already applied event id of the chunk to its content hash; ``first_index`` is the
        batch index of ``values[0]``.
        """
        decision = ChunkDecision()
        outcomes = decision.outcomes
        applied = decision.applied
        last_seen = decision.last_seen
        applied_here: dict[str, str] = {}
        rejected = OutcomeKind.REJECTED
        latest_allowed = self.latest_allowed_us
        received_at = self.received_at_us
        detail: str | None

        for offset, obj in enumerate(values):
            index = first_index + offset
            if not isinstance(obj, dict):
                if isinstance(obj, Unparsable):
                    reason, detail = RejectReason.MALFORMED_JSON, obj.detail
                else:
                    reason, detail = RejectReason.NOT_AN_OBJECT, f"event is {_kind(obj)}"
                outcomes.append(
                    Outcome(
                        index=index,
                        event_id=None,
                        user_id=None,
                        outcome=rejected,
                        reason=reason,
                        detail=detail,
                    )
                )
                continue

            # Activity tracking first, whatever the event's fate.
            raw_user = obj.get("user_id")
            user_id = normalize_user_id(raw_user)
            raw_ts = obj.get("timestamp")
            if type(raw_ts) is int and 0 <= raw_ts <= MAX_EPOCH_MS:
                ts: int | None = raw_ts * 1000
            else:
                ts = parse_timestamp_us(raw_ts) if raw_ts is not None else None
            if user_id is not None:
                candidate = ts if ts is not None and ts <= latest_allowed else received_at
                # No sentinel: a valid timestamp before 1970 is negative.
                seen = last_seen.get(user_id)
                if seen is None or candidate > seen:
                    last_seen[user_id] = candidate

            raw_event_id = obj.get("event_id")
            problem = None if is_valid_event_id(raw_event_id) else _event_id_problem(raw_event_id)
            if problem is not None:
                outcomes.append(
                    Outcome(
                        index=index,
                        event_id=None,
                        user_id=user_id,
                        outcome=rejected,
                        reason=problem[0],
                        detail=problem[1],
                    )
                )
                continue
            event_id = str(raw_event_id)  # checked above: a str

            known_hash: str | None = applied_here.get(event_id)
            if known_hash is None:
                known_hash = applied_in_store.get(event_id)
            if known_hash is not None:
                detail = None
                if content_hash(obj) != known_hash:
                    detail = "content differs from the applied version"
                outcomes.append(
                    Outcome(
                        index=index,
                        event_id=event_id,
                        user_id=user_id,
                        outcome=OutcomeKind.DUPLICATE,
                        detail=detail,
                    )
                )
                continue

            failure = self._validate(obj, user_id, raw_user, ts, raw_ts)
            if not isinstance(failure, _Valid):
                outcomes.append(
                    Outcome(
                        index=index,
                        event_id=event_id,
                        user_id=user_id,
                        outcome=rejected,
                        reason=failure[0],
                        detail=failure[1],
                    )
                )
                continue

            assert user_id is not None and ts is not None
            digest = content_hash(obj)
            applied_here[event_id] = digest
            applied.append(
                AppliedEvent(
                    index=index,
                    event_id=event_id,
                    user_id=user_id,
                    type=obj["type"],
                    timestamp_us=ts,
                    metadata_json=failure.metadata_json,
                    price=failure.price,
                    sequence=failure.sequence,
                    content_hash=digest,
                )
            )
            outcomes.append(
                Outcome(
                    index=index, event_id=event_id, user_id=user_id, outcome=OutcomeKind.APPLIED
                )
            )
        return decision

    def _validate(
        self, obj: dict[str, Any], user_id: str | None, raw_user: Any, ts: int | None, raw_ts: Any
    ) -> tuple[RejectReason, str] | _Valid:
        """The first failing check as (reason, detail), else the normalised parts."""
        if user_id is None:
            return _user_id_problem(raw_user)

        event_type = obj.get("type")
        if event_type is None:
            return RejectReason.MISSING_TYPE, "type is missing"
        if not isinstance(event_type, str) or not TYPE_PATTERN.match(event_type):
            return RejectReason.INVALID_TYPE, "type must match ^[a-z][a-z0-9_.-]{0,31}$"
        if self.type_allowlist is not None and event_type not in self.type_allowlist:
            return RejectReason.UNKNOWN_TYPE, f"type {event_type!r} is not in the allowlist"

        if raw_ts is None:
            return RejectReason.MISSING_TIMESTAMP, "timestamp is missing"
        if ts is None:
            return (
                RejectReason.INVALID_TIMESTAMP,
                "timestamp must be an RFC 3339 string with offset or integer epoch milliseconds",
            )
        if ts > self.latest_allowed_us:
            return RejectReason.TIMESTAMP_IN_FUTURE, "timestamp is beyond the allowed clock skew"

        metadata = obj.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            return (
                RejectReason.INVALID_METADATA,
                f"metadata must be an object, not {_kind(metadata)}",
            )
        if metadata:
            try:
                metadata_json = orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS)
            except TypeError as exc:
                if not _metadata_depth_ok(metadata):  # orjson stops at depth 255
                    return RejectReason.INVALID_METADATA, _TOO_DEEP
                big = _dumps_big_integers(metadata) if "64-bit" in str(exc) else None
                if big is None:
                    return RejectReason.INVALID_METADATA, f"metadata is not serialisable: {exc}"
                metadata_json = big
            # Depth > 16 needs more than 16 opening brackets in the text: count them (in C)
            # before walking the structure (in Python).
            if metadata_json.count(b"{") + metadata_json.count(
                b"["
            ) > MAX_METADATA_DEPTH and not _metadata_depth_ok(metadata):
                return RejectReason.INVALID_METADATA, _TOO_DEEP
            if len(metadata_json) > MAX_METADATA_BYTES:
                return RejectReason.INVALID_METADATA, "metadata is larger than 64 KiB"
            if b"\\u0000" in metadata_json and _NUL_ESCAPE.search(metadata_json):
                return RejectReason.INVALID_METADATA, "metadata contains a NUL character"
            # orjson writes NaN and Infinity (possible in a dict given to the library) as
            # null: refuse them rather than store a changed value. Rare, so only looked for
            # when the text has a null.
            if b"null" in metadata_json and _has_non_finite(metadata):
                return RejectReason.INVALID_METADATA, "metadata holds NaN or Infinity"
        else:
            metadata_json = b"{}"

        price: float | None = None
        if event_type == "purchase":
            found = _price_of(metadata)
            if isinstance(found, str):
                return RejectReason.INVALID_PRICE, found

            price = found

        sequence = obj.get("sequence")
        if sequence is not None and (
            isinstance(sequence, bool)
            or not isinstance(sequence, int)
            or not 1 <= sequence <= MAX_SEQUENCE
        ):
            return RejectReason.INVALID_SEQUENCE, "sequence must be an integer >= 1"
        return _Valid(metadata_json, price, sequence)
