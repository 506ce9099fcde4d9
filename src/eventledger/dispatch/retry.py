"""Retry timing: the backoff policy (a pure function) and ``Retry-After`` parsing."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]

#: A source of uniform floats in [0, 1): ``random.Random().random`` or a test's fixed value.
RandomSource = Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, and the attempt budget before the dead letter.

    The wait after failed attempt ``n`` (1-based) is
    ``min(maximum, initial * multiplier ** (n - 1))`` times a uniform factor in
    ``[1 - jitter, 1 + jitter]``: 1, 2, 4, 8 ... 60 s by default, each +-10%.
    """

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.10
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("RetryPolicy needs 0 <= initial <= maximum and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy.jitter must be in [0, 1)")
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` before jitter."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        # Capped exponent: multiplier ** 1000 would overflow a float long before it matters.
        exponent = min(attempt - 1, 1000)
        try:
            raw = self.initial * self.multiplier**exponent
        except OverflowError:
            raw = self.maximum
        return min(self.maximum, raw)

    def delay(self, attempt: int, rand: RandomSource | random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``.

        ``rand`` gives the jitter: a ``random.Random`` (each worker owns one; no global RNG is
        shared) or a callable returning a float in [0, 1). None draws from a fresh
        ``random.Random``.
        """
        if rand is None:
            rand = random.Random()
        draw = rand.random() if isinstance(rand, random.Random) else rand()
        factor = 1.0 + self.jitter * (2.0 * draw - 1.0)
        return self.base_delay(attempt) * factor

    def is_exhausted(self, attempts: int) -> bool:
        """Whether ``attempts`` failed attempts use up the budget (-> DEAD_LETTER)."""
        return attempts >= self.max_attempts


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None when
    absent or unparsable. Negative waits (a date in the past) become 0."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
