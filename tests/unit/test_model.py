"""The audit report: counts, the computed ``balanced`` and the JSON form of SPEC §2."""

from __future__ import annotations

from collections import Counter

from eventledger.model import Outcome, OutcomeKind, RejectReason, Report

RECEIVED_AT_US = 1_767_268_800_000_000  # 2026-01-01T12:00:00Z

REPORT_KEYS = [
    "batch_id",
    "received_at",
    "total",
    "applied",
    "duplicates",
    "rejected",
    "rejected_by_reason",
    "balanced",
    "outcomes",
]
OUTCOME_KEYS = ["index", "event_id", "user_id", "outcome", "reason", "detail"]


def outcome(index: int, kind: OutcomeKind, reason: RejectReason | None = None) -> Outcome:
    return Outcome(
        index=index,
        event_id=f"e{index}" if reason is None else None,
        user_id="u1",
        outcome=kind,
        reason=reason,
        detail="why" if reason is not None else None,
    )


def counted_report() -> Report:
    report = Report(batch_id="b1", received_at_us=RECEIVED_AT_US)
    for o in [
        outcome(0, OutcomeKind.APPLIED),
        outcome(1, OutcomeKind.DUPLICATE),
        outcome(2, OutcomeKind.REJECTED, RejectReason.INVALID_TYPE),
        outcome(3, OutcomeKind.REJECTED, RejectReason.INVALID_TYPE),
        outcome(4, OutcomeKind.REJECTED, RejectReason.MALFORMED_JSON),
        outcome(5, OutcomeKind.APPLIED),
    ]:
        report.count(o)
    return report


def test_count_separates_applied_duplicates_and_rejected_by_reason() -> None:
    report = counted_report()
    assert (report.total, report.applied, report.duplicates, report.rejected) == (6, 2, 1, 3)
    assert report.rejected_by_reason == {"invalid_type": 2, "malformed_json": 1}
    assert report.balanced is True


def test_to_dict_has_exactly_the_spec_shape() -> None:
    data = counted_report().to_dict()
    assert list(data) == REPORT_KEYS
    assert data["batch_id"] == "b1"
    assert data["received_at"] == "2026-01-01T12:00:00Z"
    assert data["rejected_by_reason"] == {"invalid_type": 2, "malformed_json": 1}
    assert list(data["rejected_by_reason"]) == ["invalid_type", "malformed_json"]
    assert data["balanced"] is True
    assert [list(o) for o in data["outcomes"]] == [OUTCOME_KEYS] * 6
    assert data["outcomes"][0] == {
        "index": 0,
        "event_id": "e0",
        "user_id": "u1",
        "outcome": "applied",
        "reason": None,
        "detail": None,
    }
    assert data["outcomes"][2] == {
        "index": 2,
        "event_id": None,
        "user_id": "u1",
        "outcome": "rejected",
        "reason": "invalid_type",
        "detail": "why",
    }


def test_hand_built_report_whose_counts_do_not_add_up_is_not_balanced() -> None:
    report = Report(
        batch_id="b",
        received_at_us=RECEIVED_AT_US,
        total=5,
        applied=2,
        duplicates=1,
        rejected_by_reason=Counter({"invalid_type": 1}),
        outcomes_kept=False,
    )
    assert report.rejected == 1
    assert report.balanced is False
    assert report.to_dict()["balanced"] is False
    report.rejected_by_reason["missing_type"] += 1
    assert report.balanced is True


def test_report_is_unbalanced_when_kept_outcomes_disagree_with_counts() -> None:
    report = Report(
        batch_id="b",
        received_at_us=RECEIVED_AT_US,
        total=1,
        applied=1,
        outcomes=[],
    )
    assert report.balanced is False


def test_extra_outcome_makes_report_unbalanced() -> None:
    report = counted_report()
    report.outcomes.append(outcome(6, OutcomeKind.APPLIED))
    assert report.balanced is False


def test_empty_report_balances() -> None:
    report = Report(batch_id="b", received_at_us=0)
    assert report.balanced is True
    assert report.to_dict()["received_at"] == "1970-01-01T00:00:00Z"
    assert report.to_dict()["outcomes"] == []


def test_streamed_report_keeps_counts_only_and_says_so() -> None:
    report = Report(batch_id="b", received_at_us=RECEIVED_AT_US + 5, outcomes_kept=False)
    report.count(outcome(0, OutcomeKind.APPLIED))
    report.count(outcome(1, OutcomeKind.REJECTED, RejectReason.MISSING_TYPE))
    data = report.to_dict()
    assert data["outcomes"] == []
    assert data["outcomes_streamed"] is True
    assert data["total"] == 2 and data["balanced"] is True
    assert data["received_at"] == "2026-01-01T12:00:00.000005Z"
    assert "outcomes" not in report.summary_dict()


def test_reason_codes_are_the_spec_words() -> None:
    assert {r.value for r in RejectReason} >= {
        "malformed_json",
        "not_an_object",
        "missing_event_id",
        "invalid_event_id",
        "missing_user_id",
        "invalid_user_id",
        "missing_type",
        "invalid_type",
        "unknown_type",
        "missing_timestamp",
        "invalid_timestamp",
        "timestamp_in_future",
        "invalid_metadata",
        "invalid_price",
    }
    assert [k.value for k in OutcomeKind] == ["applied", "duplicate", "rejected"]


def test_redact_url_hides_only_the_password() -> None:
    from eventledger.store import redact_url

    assert redact_url("postgresql://app:s3cret@db:5432/ev") == "postgresql://app:***@db:5432/ev"
    assert redact_url("postgresql://app@db/ev") == "postgresql://app@db/ev"
    assert redact_url("sqlite:///eventledger.db") == "sqlite:///eventledger.db"
