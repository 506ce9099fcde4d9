"""Time as integer microseconds since the Unix epoch (UTC), and its RFC 3339 form."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

US_PER_SECOND = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Year 9999-12-31T23:59:59.999Z in milliseconds: the largest instant a datetime can hold.
MAX_EPOCH_MS = 253_402_300_799_999
# 0001-01-01T00:00:00Z in microseconds: the earliest instant a datetime can hold.
MIN_US = -62_135_596_800_000_000

# RFC 3339 date-time with a mandatory offset ("Z" or +hh:mm). fromisoformat alone would also
# take dates without a time, naive times and other ISO 8601 forms we do not want.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})\Z"
)


def now_us() -> int:
    """The current time in microseconds since the epoch."""
    return time.time_ns() // 1000


def datetime_to_us(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (naive ones are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def us_to_datetime(value: int) -> datetime:
    """The aware UTC datetime of microseconds since the epoch."""
    return datetime.fromtimestamp(value // US_PER_SECOND, tz=UTC).replace(
        microsecond=value % US_PER_SECOND
    )


def format_us(value: int | None) -> str | None:
    """RFC 3339 text (UTC, "Z") of microseconds since the epoch; None stays None."""
    if value is None:
        return None
    # isoformat, not strftime("%Y"): that drops the zero padding of years before 1000 on
    # glibc ("999-12-31..."), which is not RFC 3339. Microseconds appear only when non-zero.
    return us_to_datetime(value).replace(tzinfo=None).isoformat() + "Z"


def parse_rfc3339_us(text: str) -> int | None:
    """Microseconds since the epoch of an RFC 3339 string with offset, or None if invalid."""
    if len(text) > 40 or not _RFC3339.match(text):
        return None
    try:
        dt = datetime.fromisoformat(text.upper())
        value = datetime_to_us(dt)
    except (ValueError, OverflowError):
        return None
    # An offset can push an instant past year 1 or 9999 in UTC, where it cannot be shown.
    return value if MIN_US <= value <= MAX_EPOCH_MS * 1000 + 999 else None
