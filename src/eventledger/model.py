"""Domain objects: rejection reasons, per-event outcomes and the audit report."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .timeutil import format_us


class RejectReason(enum.StrEnum):
    """Why an event was rejected. The first failing check wins, in SPEC §2 order."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_EVENT_ID = "missing_event_id"
    INVALID_EVENT_ID = "invalid_event_id"
    MISSING_USER_ID = "missing_user_id"
    INVALID_USER_ID = "invalid_user_id"
    MISSING_TYPE = "missing_type"
    INVALID_TYPE = "invalid_type"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_TIMESTAMP = "missing_timestamp"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    INVALID_METADATA = "invalid_metadata"
    INVALID_PRICE = "invalid_price"
    INVALID_SEQUENCE = "invalid_sequence"


class OutcomeKind(enum.StrEnum):
    """What happened to one event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Outcome(NamedTuple):
    """What happened to the event at ``index`` of the input batch (0-based).

    A named tuple rather than a frozen dataclass: one is built per event, and a frozen
    dataclass costs 4x more to build (705 ns against 166 ns measured here).
    """

    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    event_id: str | None
    user_id: str | None
    outcome: OutcomeKind
    reason: RejectReason | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "outcome": self.outcome.value,
            "reason": self.reason.value if self.reason is not None else None,
            "detail": self.detail,
        }


@dataclass(slots=True, kw_only=True)
class Report:
    """The audit report of one batch.

    ``balanced`` is computed from the counts (``total == applied + duplicates + rejected``,
    rejected being the sum of ``rejected_by_reason``), never assumed. When outcomes were
    streamed to a sink instead of kept (large inputs), ``outcomes`` is empty and
    ``outcomes_kept`` is False; the counts still cover every event.
    """

    batch_id: str
    received_at_us: int
    total: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    outcomes: list[Outcome] = field(default_factory=list)
    outcomes_kept: bool = True

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def balanced(self) -> bool:
        counted = self.applied + self.duplicates + self.rejected
        if self.total != counted:
            return False
        # When outcomes are kept they must agree with the counts too.
        return not self.outcomes_kept or len(self.outcomes) == self.total

    @property
    def received_at(self) -> str:
        text = format_us(self.received_at_us)
        assert text is not None
        return text

    def count(self, outcome: Outcome) -> None:
        """Count one outcome (and keep it when outcomes are kept)."""
        self.total += 1
        if outcome.outcome is OutcomeKind.APPLIED:
            self.applied += 1
        elif outcome.outcome is OutcomeKind.DUPLICATE:
            self.duplicates += 1
        else:
            assert outcome.reason is not None
            self.rejected_by_reason[outcome.reason.value] += 1
        if self.outcomes_kept:
            self.outcomes.append(outcome)

    def summary_dict(self) -> dict[str, Any]:
        """The report without its outcomes."""
        return {
            "batch_id": self.batch_id,
            "received_at": self.received_at,
            "total": self.total,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "balanced": self.balanced,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of SPEC §2."""
        data = self.summary_dict()
        data["outcomes"] = [o.to_dict() for o in self.outcomes]
        if not self.outcomes_kept:
            data["outcomes_streamed"] = True
        return data
