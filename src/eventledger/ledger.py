"""``Ledger``: the library entry point (SPEC §5)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import NotFoundError
from .model import Outcome, Report
from .processor import DEFAULT_MAX_CLOCK_SKEW_US, Processor, parse_item
from .store import Store, open_store
from .store.base import Endpoint, new_endpoint_secret
from .timeutil import datetime_to_us, now_us

if TYPE_CHECKING:
    from .summary import VerifyResult

DEFAULT_CHUNK_SIZE = 2000

OutcomeSink = Callable[[Outcome], None]


class Ledger:
    """Applies batches of untrusted events exactly once and answers activity queries.

    ``db_url`` selects the store (``sqlite:///path`` or ``postgresql://...``); None means
    ``EVENTLEDGER_DB`` or the embedded default ``sqlite:///eventledger.db``. A ``store``
    already opened may be passed instead.
    """

    def __init__(
        self,
        db_url: str | None = None,
        *,
        store: Store | None = None,
        max_clock_skew: timedelta = timedelta(microseconds=DEFAULT_MAX_CLOCK_SKEW_US),
        type_allowlist: Iterable[str] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.store = store if store is not None else open_store(db_url)
        self.max_clock_skew_us = int(max_clock_skew / timedelta(microseconds=1))
        self.type_allowlist = frozenset(type_allowlist) if type_allowlist is not None else None
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.chunk_size = chunk_size

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processing ------------------------------------------------------------------------
    def process(
        self,
        events: Iterable[Any],
        received_at: datetime | None = None,
        *,
        outcome_sink: OutcomeSink | None = None,
        keep_outcomes: bool = True,
        progress: Callable[[int], None] | None = None,
        batch_id: str | None = None,
    ) -> Report:
        """Process a batch in input order and return its audit report.

        ``events`` is any iterable of dicts or raw JSON texts (``str``/``bytes``); it is read
        once, in chunks, and never modified. Every outcome goes to ``outcome_sink`` as it is
        decided; with ``keep_outcomes=False`` the report keeps only the counts, so memory does
        not grow with the batch. ``progress`` is called with the number of events done.
        """
        received_at_us = datetime_to_us(received_at) if received_at is not None else now_us()
        report = Report(
            batch_id=batch_id or uuid.uuid4().hex,
            received_at_us=received_at_us,
            outcomes_kept=keep_outcomes,
        )
        processor = Processor(
            received_at_us=received_at_us,
            max_clock_skew_us=self.max_clock_skew_us,
            type_allowlist=self.type_allowlist,
        )
        done = 0
        for values in _chunked(events, self.chunk_size):
            decision = self.store.apply_chunk(
                values, processor, first_index=done, batch_id=report.batch_id
            )
            for outcome in decision.outcomes:
                report.count(outcome)
                if outcome_sink is not None:
                    outcome_sink(outcome)
            done += len(values)
            if progress is not None:
                progress(done)
        self.store.save_batch(report)
        return report

    # -- queries -----------------------------------------------------------------------
    def activity(self, user_id: str | int) -> dict[str, Any] | None:
        """The user's activity (last/first seen, counts by type, total value) or None."""
        return self.store.activity(str(user_id).strip())

    def fetch_user_activity_summary(self, user_id: str | int) -> dict[str, Any]:
        """``{"click", "view", "purchase", "total_value"}`` from the maintained aggregate."""
        return self.store.summary(str(user_id).strip())

    def verify(self, user_id: str | int | None = None) -> VerifyResult:
        """Recompute the maintained aggregate from the stored events and list mismatches."""
        from .summary import verify_store

        return verify_store(self.store, None if user_id is None else str(user_id).strip())

    def report(self, batch_id: str) -> dict[str, Any]:
        """A stored report in its JSON form."""
        found = self.store.report(batch_id)
        if found is None:
            raise NotFoundError(f"no report for batch {batch_id!r}")
        return found

    # -- endpoints -----------------------------------------------------------------------
    def add_endpoint(
        self,
        url: str,
        *,
        secret: str | None = None,
        event_types: Iterable[str] | None = None,
        enabled: bool = True,
        endpoint_id: str | None = None,
    ) -> Endpoint:
        """Register a webhook endpoint; a ``whsec_`` secret is generated when none is given."""
        from .endpoints import validate_endpoint

        endpoint = validate_endpoint(
            Endpoint(
                endpoint_id=endpoint_id or "ep_" + uuid.uuid4().hex[:16],
                url=url,
                secret=secret if secret is not None else new_endpoint_secret(),
                event_types=tuple(event_types) if event_types is not None else None,
                enabled=enabled,
                created_at_us=now_us(),
            )
        )
        self.store.add_endpoint(endpoint)
        return endpoint


def _chunked(events: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in events:
        chunk.append(parse_item(item))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
