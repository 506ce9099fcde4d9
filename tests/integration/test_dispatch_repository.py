"""The delivery repository contract, on both backends (what the dispatcher and the API use)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventledger.errors import ConflictError, InputError, NotFoundError
from eventledger.store import open_store
from eventledger.store.deliveries import (
    DeliveryRepository,
    DeliveryResult,
    DeliveryState,
    NewDelivery,
)
from eventledger.timeutil import now_us


@pytest.fixture
async def repo(store_url: str) -> AsyncIterator[DeliveryRepository]:
    store = open_store(store_url)
    r: DeliveryRepository = store.deliveries()
    yield r
    await r.close()
    store.close()


def row(delivery_id: str, entity: str, seq: int, **kw: Any) -> NewDelivery:
    return NewDelivery(
        delivery_id=delivery_id,
        webhook_id=delivery_id,
        entity_key=entity,
        sequence=seq,
        target_url="http://127.0.0.1:9/hook",
        payload=b'{"x":1}',
        **kw,
    )


async def test_insert_is_idempotent_and_a_taken_sequence_conflicts(
    repo: DeliveryRepository,
) -> None:
    assert await repo.insert([row("a", "E", 1), row("a", "E", 1), row("b", "E", 2)]) == [
        True,
        False,
        True,
    ]
    assert await repo.insert([row("a", "other", 7)]) == [False]
    with pytest.raises(ConflictError):
        await repo.insert([row("c", "E", 2), row("d", "E", 3)])
    assert await repo.get("d") is None  # nothing of the failed batch was written


async def test_claim_is_ordered_leased_and_exclusive(repo: DeliveryRepository) -> None:
    await repo.insert([row(f"e{s}", "E", s) for s in (1, 2, 3)] + [row("f1", "F", 1)])
    first = await repo.claim("w1", 10, 5_000_000)
    assert sorted(c.delivery_id for c in first) == ["e1", "f1"]  # e2, e3 wait for e1
    assert all(c.attempts == 1 and c.payload == b'{"x":1}' for c in first)
    assert await repo.claim("w2", 10, 5_000_000) == []
    info = await repo.get("e2")
    assert info is not None and info.blocked_by == {"sequence": 1, "state": "IN_FLIGHT"}
    assert info.to_dict()["next_attempt_at"] is None
    # Only the lease owner records; completing e1 makes e2 claimable.
    done = DeliveryResult(delivery_id="e1", state=DeliveryState.COMPLETED, last_status=204)
    assert await repo.record("w2", [done]) == 0
    assert await repo.record("w1", [done]) == 1
    (second,) = await repo.claim("w2", 10, 5_000_000)
    assert second.delivery_id == "e2"
    # Released rows go back with the attempt undone, due when asked.
    assert await repo.release("w2", ["e2"], now_us() + 60_000_000) == 1
    back = await repo.get("e2")
    assert back is not None and back.state is DeliveryState.PENDING and back.attempts == 0
    assert await repo.claim("w3", 10, 5_000_000) == []  # not due for a minute
    # An expired lease is reclaimed (f1 was leased for 5 s; ask as if 10 s later).
    (again,) = await repo.claim("w4", 10, 1_000_000, now_us() + 10_000_000)
    assert again.delivery_id == "f1" and again.attempts == 2


async def test_list_counts_retry_and_skip(repo: DeliveryRepository) -> None:
    await repo.insert([row(f"d{i}", f"U{i}", 1) for i in range(5)])
    claimed = await repo.claim("w", 10, 5_000_000)
    assert len(claimed) == 5
    await repo.record(
        "w",
        [
            DeliveryResult(
                delivery_id=c.delivery_id,
                state=DeliveryState.DEAD_LETTER
                if c.delivery_id < "d3"
                else DeliveryState.COMPLETED,
                last_error="HTTP 500" if c.delivery_id < "d3" else None,
            )
            for c in claimed
        ],
    )
    counts = await repo.counts()
    assert counts["DEAD_LETTER"] == 3 and counts["COMPLETED"] == 2 and counts["PENDING"] == 0
    assert set(counts) == {s.value for s in DeliveryState}
    dead = await repo.list_deliveries(DeliveryState.DEAD_LETTER, limit=2)
    assert [d.delivery_id for d in dead] == ["d0", "d1"]
    page2 = await repo.list_deliveries("dead_letter", limit=2, offset=2)
    assert [d.delivery_id for d in page2] == ["d2"]
    assert len(await repo.list_deliveries(None, limit=100)) == 5
    with pytest.raises(InputError):
        await repo.list_deliveries("NOPE")

    retried = await repo.retry_dead_letter("d0")
    assert retried.state is DeliveryState.PENDING and retried.attempts == 0
    skipped = await repo.skip_dead_letter("d1")
    assert skipped.state is DeliveryState.SKIPPED and skipped.completed_at_us is not None
    with pytest.raises(ConflictError):
        await repo.skip_dead_letter("d0")  # PENDING now
    with pytest.raises(NotFoundError):
        await repo.retry_dead_letter("missing")
    assert await repo.work_remaining()  # d0 is PENDING and ready
    assert await repo.count_blocked() == 0


async def test_gaps_and_dead_letters_count_as_blocked(repo: DeliveryRepository) -> None:
    await repo.insert([row("g3", "G", 3), row("h1", "H", 1), row("h2", "H", 2)])
    (h1,) = [c for c in await repo.claim("w", 10, 5_000_000) if c.delivery_id == "h1"]
    await repo.record(
        "w", [DeliveryResult(delivery_id=h1.delivery_id, state=DeliveryState.DEAD_LETTER)]
    )
    assert await repo.count_blocked() == 2  # g3 (g2 missing) and h2 (h1 dead)
    assert not await repo.work_remaining()  # nothing can move without an operator
    await repo.skip_dead_letter("h1")
    assert await repo.count_blocked() == 1
    (h2,) = await repo.claim("w", 10, 5_000_000)
    assert h2.delivery_id == "h2"
