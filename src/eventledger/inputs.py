"""Reading events from files and streams: NDJSON line by line, or a JSON array streamed."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import IO

from .processor import ParsedValue, Unparsable

_READ_SIZE = 1 << 20
_WS = " \t\r\n"
_NUMBER_CHARS = "0123456789+-.eE"


def iter_events(stream: IO[bytes]) -> Iterator[bytes | ParsedValue | Unparsable]:
    """Yield the events of a binary stream without loading it whole.

    A stream whose first non-blank byte is ``[`` is a JSON array, read element by element
    (lines after its closing bracket are read as NDJSON); anything else is NDJSON, one event
    per line (blank lines are not events). A malformed line is yielded as it is, so the
    processor rejects it and the batch goes on.
    """
    head = stream.read(_READ_SIZE)
    if head.startswith(codecs.BOM_UTF8):  # written by some editors and tools; not an event
        head = head[len(codecs.BOM_UTF8) :]
    if head.lstrip().startswith(b"["):
        yield from _ArrayReader(head, stream)
        return
    yield from _iter_lines(head, stream)


def _iter_lines(head: bytes, stream: IO[bytes]) -> Iterator[bytes]:
    """The non-blank lines of ``head`` followed by the rest of the stream."""
    pending = b""
    chunk = head
    while chunk:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.strip():
                yield line
        chunk = stream.read(_READ_SIZE)
    if pending.strip():
        yield pending


class _ArrayReader:
    """Streams the elements of a JSON array with the stdlib's C scanner (``raw_decode``).

    When the array itself is broken (an element that is not JSON, a missing comma), the
    elements after it cannot be told apart: the rest is yielded as one malformed event, so
    the report still accounts for it and still balances.
    """

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.stream = stream
        # Keeps a multi-byte character cut at the end of a read for the next one; invalid
        # bytes become lone surrogates, which every field check then refuses (a "replace"
        # decoding would silently alter ids and apply the altered event).
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.eof = False
        self.buf = ""
        self.pos = 0
        self.json = json.JSONDecoder(parse_constant=_refuse_constant)
        self._append(head)
        self.pos = self.buf.index("[") + 1

    def _append(self, data: bytes) -> None:
        text = self.decoder.decode(data, final=self.eof)
        self.buf = self.buf[self.pos :] + text
        self.pos = 0

    def _refill(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(_READ_SIZE)
        if not chunk:
            self.eof = True
        self._append(chunk)
        return True

    def _skip_ws(self) -> bool:
        """Skip blanks; False at the end of the input."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return True
            if not self._refill():
                return False

    def __iter__(self) -> Iterator[ParsedValue | Unparsable | bytes]:
        count = 0
        while True:
            if not self._skip_ws():
                yield Unparsable(f"the JSON array ends early after {count} elements")
                return
            if self.buf[self.pos] == "]":
                self.pos += 1
                if self._skip_ws():
                    # More after the array: garbage, or NDJSON whose first event is an array.
                    # Each further line is its own event, so the valid ones still count.
                    rest = self.buf[self.pos :].encode("utf-8", "surrogateescape")
                    yield from _iter_lines(rest + self.decoder.getstate()[0], self.stream)
                return
            if count:
                if self.buf[self.pos] != ",":
                    yield self._broken(count, "expected ',' or ']'")
                    return
                self.pos += 1
                if not self._skip_ws():
                    yield Unparsable(f"the JSON array ends early after {count} elements")
                    return
            while True:
                try:
                    value, end = self.json.raw_decode(self.buf, self.pos)
                except (ValueError, RecursionError) as exc:
                    if self._refill():
                        continue
                    yield self._broken(count, str(exc))
                    return
                # A number at the end of the buffer may go on in the next read: "12" then
                # "34", and also "-1" then ".5e3" (the scanner stops at a lone "." or "e").
                if not self.buf[end:].strip(_NUMBER_CHARS) and self._refill():
                    continue
                break
            yield ParsedValue(value)
            count += 1
            self.pos = end

    def _broken(self, count: int, why: str) -> Unparsable:
        return Unparsable(
            f"element {count} of the JSON array is not valid JSON ({why});"
            " the rest of the array cannot be read"
        )


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")
