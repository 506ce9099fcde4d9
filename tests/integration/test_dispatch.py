"""The dispatcher against real stores and real aiohttp receivers on loopback (SPEC §4)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from test_dispatch_support import Received, Receiver  # sibling test module

from eventledger import Ledger
from eventledger.dispatch import (
    DeliveryState,
    DispatchConfig,
    DispatchEvent,
    EventOrchestrator,
    RetryPolicy,
)
from eventledger.errors import ConflictError, NotFoundError, TargetRefusedError
from eventledger.store import Store, open_store

FAST = RetryPolicy(initial=0.01, maximum=0.05, jitter=0.0, max_attempts=5)


def config(**kw: Any) -> DispatchConfig:
    base: dict[str, Any] = {
        "allow_private_targets": True,
        "retry": FAST,
        "poll_interval": 0.02,
        "request_timeout": 2.0,
        "lease_duration": 10.0,
        "workers": 20,
    }
    base.update(kw)
    return DispatchConfig(**base)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = await Receiver().start()
    yield rx
    await rx.close()


@pytest.fixture
def store(store_url: str) -> Any:
    s = open_store(store_url)
    yield s
    s.close()


def ev(event_id: str, entity: str, seq: int, rx: Receiver) -> DispatchEvent:
    return DispatchEvent(event_id, entity, seq, {"id": event_id, "seq": seq}, rx.url)


async def state_of(o: EventOrchestrator, event_id: str) -> DeliveryState:
    info = await o.get_delivery(event_id)
    assert info is not None
    return info.state


# -- seed requirement 1 ----------------------------------------------------------------------
async def test_sequence_guard_holds_event_2_while_event_1_times_out_and_retries(
    store: Store, receiver: Receiver
) -> None:
    async def slow_first_two(rx: Receiver, r: Received, n: int) -> web.Response:
        if r.webhook_id == "e1" and n < 2:
            await asyncio.sleep(1.0)  # far beyond the request timeout
        return web.Response(status=200)

    receiver.behaviour = slow_first_two
    cfg = config(request_timeout=0.2, retry=RetryPolicy(initial=0.1, jitter=0.0))
    async with EventOrchestrator(store, cfg) as o:
        assert await o.submit(ev("e1", "user-1", 1, receiver))
        assert await o.submit(ev("e2", "user-1", 2, receiver))
        saw_blocked = set()
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline
            sent = receiver.ids()
            info = await o.get_delivery("e2")  # read before e1: e1 cannot move backwards
            if await state_of(o, "e1") is DeliveryState.COMPLETED:
                break
            assert "e2" not in sent, "event 2 was sent before event 1 completed"
            assert info is not None and info.state is DeliveryState.PENDING
            assert info.blocked_by is not None and info.blocked_by["sequence"] == 1
            saw_blocked.add(info.blocked_by["state"])
            await asyncio.sleep(0.01)
        assert await o.wait_idle(10)
    assert receiver.ids() == ["e1", "e1", "e1", "e2"]
    assert "RETRY_WAIT" in saw_blocked  # event 2 waited while event 1 was retrying
    e1 = await _info(store, "e1")
    assert e1.attempts == 3 and e1.state is DeliveryState.COMPLETED
    assert e1.last_error is not None and "timeout" in e1.last_error
    assert receiver.requests[3].at >= receiver.requests[2].at


async def _info(store: Store, delivery_id: str) -> Any:
    async with store.deliveries() as repo:
        info = await repo.get(delivery_id)
    assert info is not None
    return info


# -- seed requirement 2 ----------------------------------------------------------------------
async def test_100_simultaneous_submits_give_one_post(store: Store, receiver: Receiver) -> None:
    async with EventOrchestrator(store, config()) as o:
        results = await asyncio.gather(
            *(o.submit(ev("same", "u", 1, receiver)) for _ in range(100))
        )
        assert results.count(True) == 1
        assert await o.wait_idle(10)
        assert o.metrics.duplicates_suppressed == 99
    await asyncio.sleep(0.1)
    assert receiver.ids() == ["same"]


async def test_100_simultaneous_submits_on_two_orchestrators_give_one_post(
    store_url: str, receiver: Receiver
) -> None:
    s1, s2 = open_store(store_url), open_store(store_url)
    try:
        async with EventOrchestrator(s1, config()) as a, EventOrchestrator(s2, config()) as b:
            calls = [(a if i % 2 else b).submit(ev("same", "u", 1, receiver)) for i in range(100)]
            # And many distinct events submitted through both, claimed by both.
            calls += [
                (a if i % 3 else b).submit(ev(f"x{i}", f"ent{i % 7}", i // 7 + 1, receiver))
                for i in range(140)
            ]
            results = await asyncio.gather(*calls)
            assert results[:100].count(True) == 1
            assert all(results[100:])
            assert await a.wait_idle(20) and await b.wait_idle(20)
            sent = a.metrics.sent + b.metrics.sent
        ids = receiver.ids()
        assert sent == len(ids) == 141
        assert ids.count("same") == 1
        assert sorted(ids) == sorted(["same"] + [f"x{i}" for i in range(140)])
        # Per entity, sequences arrived in order.
        for ent in range(7):
            got = [int(i[1:]) for i in ids if i.startswith("x") and int(i[1:]) % 7 == ent]
            assert got == sorted(got)
    finally:
        s1.close()
        s2.close()


# -- seed requirement 3 ----------------------------------------------------------------------
def _tasks() -> set[asyncio.Task[Any]]:
    """Tasks of this loop, except the receiver's own connection handlers (server side)."""
    return {
        t
        for t in asyncio.all_tasks()
        if not getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    }


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("eventledger-")]


async def _pg_backends(store_url: str) -> int:
    if not store_url.startswith("postgresql"):
        return 0
    import psycopg

    async with await psycopg.AsyncConnection.connect(store_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def _slow(rx: Receiver, r: Received, n: int) -> web.Response:
    await asyncio.sleep(0.4)
    return web.Response(status=200)


async def test_stop_ends_every_task_finishes_in_flight_and_closes_connections(
    store_url: str, store: Store, receiver: Receiver
) -> None:
    receiver.behaviour = _slow
    before = _tasks()
    backends_before = await _pg_backends(store_url)
    o = EventOrchestrator(store, config(workers=8))
    await o.start()
    for i in range(30):
        await o.submit(ev(f"s{i}", f"u{i}", 1, receiver))
    await receiver.wait_for(5)
    assert len(_tasks()) > len(before)
    assert o._transport is not None and o._transport._session is not None
    session = o._transport._session
    connector = session.connector
    assert connector is not None and not connector.closed
    await o.stop()
    assert _tasks() == before
    assert _our_threads() == []
    assert session.closed and connector.closed
    for _ in range(50):  # a closed connection's backend may linger a moment
        if await _pg_backends(store_url) == backends_before:
            break
        await asyncio.sleep(0.02)
    assert await _pg_backends(store_url) == backends_before
    # Every request the receiver saw was recorded COMPLETED; nothing is left IN_FLIGHT.
    async with store.deliveries() as repo:
        counts = await repo.counts()
        done = {d.delivery_id for d in await repo.list_deliveries("COMPLETED", limit=100)}
    assert done == set(receiver.ids()) and len(done) >= 5
    assert counts["IN_FLIGHT"] == 0
    assert counts["COMPLETED"] + counts["PENDING"] == 30


async def test_cancelling_run_stops_gracefully_without_leaks(
    store: Store, receiver: Receiver
) -> None:
    receiver.behaviour = _slow
    before = _tasks()
    o = EventOrchestrator(store, config(workers=4))
    for i in range(10):
        await o.submit(ev(f"c{i}", f"u{i}", 1, receiver))
    runner = asyncio.create_task(o.run())
    await receiver.wait_for(2)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert _tasks() == before
    assert _our_threads() == []
    async with store.deliveries() as repo:
        counts = await repo.counts()
    assert counts["IN_FLIGHT"] == 0
    assert counts["COMPLETED"] == len(receiver.ids()) >= 2


# -- dead letter -----------------------------------------------------------------------------
async def test_dead_letter_blocks_its_entity_until_retry_or_skip(
    store: Store, receiver: Receiver
) -> None:
    healthy = {"b1", "b2", "a2", "c2"}

    async def failing(rx: Receiver, r: Received, n: int) -> web.Response:
        return web.Response(status=200 if r.webhook_id in healthy else 500)

    receiver.behaviour = failing
    async with EventOrchestrator(store, config()) as o:
        for event_id, entity, seq in [
            ("a1", "A", 1),
            ("a2", "A", 2),
            ("b1", "B", 1),
            ("b2", "B", 2),
            ("c1", "C", 1),
            ("c2", "C", 2),
        ]:
            await o.submit(ev(event_id, entity, seq, receiver))
        assert await o.wait_idle(10)
        a1 = await o.get_delivery("a1")
        assert a1 is not None and a1.state is DeliveryState.DEAD_LETTER
        assert a1.attempts == 5 and a1.last_error == "HTTP 500" and a1.last_status == 500
        assert receiver.ids().count("a1") == 5
        a2 = await o.get_delivery("a2")
        assert a2 is not None and a2.state is DeliveryState.PENDING
        assert a2.blocked_by == {"sequence": 1, "state": "DEAD_LETTER"}
        assert "a2" not in receiver.ids() and "c2" not in receiver.ids()
        assert receiver.ids().count("b1") == 1 and receiver.ids().count("b2") == 1
        assert await o.refresh_blocked() == 2 and o.metrics.blocked == 2
        assert o.metrics.dead_lettered == 2

        # Skip: the entity moves on without a1.
        skipped = await o.skip_dead_letter("a1")
        assert skipped.state is DeliveryState.SKIPPED
        # Retry after the receiver is fixed: c1 goes again with attempts reset.
        healthy.add("c1")
        retried = await o.retry_dead_letter("c1")
        assert retried.state is DeliveryState.PENDING and retried.attempts == 0
        assert await o.wait_idle(10)
        assert await state_of(o, "a2") is DeliveryState.COMPLETED
        assert await state_of(o, "c1") is DeliveryState.COMPLETED
        assert await state_of(o, "c2") is DeliveryState.COMPLETED
        ids = receiver.ids()
        assert ids.index("c2") > len(ids) - 1 - ids[::-1].index("c1")
        assert await o.refresh_blocked() == 0
        with pytest.raises(ConflictError):
            await o.skip_dead_letter("c1")  # COMPLETED, not DEAD_LETTER
        with pytest.raises(NotFoundError):
            await o.retry_dead_letter("nope")
        info = await o.get_delivery("c1")
        assert info is not None and info.attempts == 1


# -- per-host limit ----------------------------------------------------------------------------
async def test_per_host_limit_holds_and_a_slow_host_does_not_stall_another(
    sqlite_url: str,
) -> None:
    slow = await Receiver("127.0.0.1").start()
    fast = await Receiver("127.0.0.2").start()

    async def slow_answer(rx: Receiver, r: Received, n: int) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(status=200)

    slow.behaviour = slow_answer
    store = open_store(sqlite_url)
    try:
        async with EventOrchestrator(store, config(workers=100, max_per_host=50)) as o:
            # Slow host first, so its deliveries are claimed before the fast host's.
            for i in range(300):
                await o.submit(DispatchEvent(f"s{i}", f"s{i}", 1, b"{}", slow.url))
            for i in range(200):
                await o.submit(DispatchEvent(f"f{i}", f"f{i % 20}", i // 20 + 1, b"{}", fast.url))
            deadline = time.monotonic() + 20
            while len(fast.requests) < 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            fast_done_at = time.monotonic()
            assert len(slow.requests) < 300  # the fast host finished while the slow one crawled
            assert await o.wait_idle(30)
        last_slow = max(r.at for r in slow.requests)
        assert fast_done_at < last_slow
        assert slow.max_active == 50  # the limit was reached, never exceeded
        assert len(slow.requests) == 300 and len(set(slow.ids())) == 300
        assert sorted(fast.ids()) == sorted(f"f{i}" for i in range(200))
    finally:
        store.close()
        await slow.close()
        await fast.close()


# -- Retry-After -------------------------------------------------------------------------------
async def test_retry_after_is_honoured_up_to_the_maximum(store: Store, receiver: Receiver) -> None:
    async def limited(rx: Receiver, r: Received, n: int) -> web.Response:
        if n == 0 and r.webhook_id == "r1":
            return web.Response(status=429, headers={"Retry-After": "1"})
        if n == 0 and r.webhook_id == "r2":
            return web.Response(status=503, headers={"Retry-After": "3600"})
        return web.Response(status=200)

    receiver.behaviour = limited
    policy = RetryPolicy(initial=0.01, maximum=0.3, jitter=0.0)
    async with EventOrchestrator(store, config(retry=policy)) as o:
        await o.submit(ev("r1", "u1", 1, receiver))
        await o.submit(ev("r2", "u2", 1, receiver))
        assert await o.wait_idle(10)
    times = {rid: [r.at for r in receiver.requests if r.webhook_id == rid] for rid in ("r1", "r2")}
    gap1 = times["r1"][1] - times["r1"][0]
    gap2 = times["r2"][1] - times["r2"][0]
    # Retry-After: 1 on a 429 is used instead of the policy's 0.01 s, capped at maximum 0.3 s
    assert 0.28 <= gap1 <= 0.9
    # ...and 3600 s on a 503 is capped at the policy's maximum (0.3 s).
    assert 0.28 <= gap2 <= 0.9


async def test_retry_after_below_the_maximum_is_used_as_given(
    sqlite_url: str, receiver: Receiver
) -> None:
    async def limited(rx: Receiver, r: Received, n: int) -> web.Response:
        if n == 0:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    receiver.behaviour = limited
    store = open_store(sqlite_url)
    try:
        policy = RetryPolicy(initial=0.01, maximum=60.0, jitter=0.0)
        async with EventOrchestrator(store, config(retry=policy)) as o:
            await o.submit(ev("r1", "u1", 1, receiver))
            assert await o.wait_idle(10)
    finally:
        store.close()
    at = [r.at for r in receiver.requests]
    assert len(at) == 2 and 0.95 <= at[1] - at[0] <= 1.6


# -- signatures and the pipeline ---------------------------------------------------------------
def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks verification, written independently of eventledger."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if abs(time.time() - int(headers["webhook-timestamp"])) > 300:
        return False
    return any(
        hmac.compare_digest(part.split(",", 1)[1], expected)
        for part in headers["webhook-signature"].split(" ")
        if part.startswith("v1,")
    )


async def test_pipeline_deliveries_are_signed_with_the_endpoint_secret_in_user_order(
    store_url: str, receiver: Receiver
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    with Ledger(store_url) as ledger:
        endpoint = ledger.add_endpoint(receiver.url, secret=secret)
        ledger.process(
            [
                {
                    "event_id": f"p{i}",
                    "user_id": f"u{i % 3}",
                    "type": "click",
                    "timestamp": 1_700_000_000_000 + i,
                }
                for i in range(12)
            ]
        )
    store = open_store(store_url)
    try:
        async with EventOrchestrator(store, config()) as o:
            assert await o.wait_idle(10)
            info = await o.get_delivery(f"{endpoint.endpoint_id}/p0")
            assert info is not None and info.state is DeliveryState.COMPLETED
    finally:
        store.close()
    assert sorted(receiver.ids()) == sorted(f"p{i}" for i in range(12))
    for r in receiver.requests:
        assert r.headers["Content-Type"] == "application/json"
        assert verify_standard_webhook(secret, r.headers, r.body)
        wrong = "whsec_" + base64.b64encode(b"x" * 32).decode()
        assert not verify_standard_webhook(wrong, r.headers, r.body)
        assert orjson.loads(r.body)["event_id"] == r.webhook_id
    for user in range(3):
        got = [
            orjson.loads(r.body)["sequence"]
            for r in receiver.requests
            if orjson.loads(r.body)["user_id"] == f"u{user}"
        ]
        assert got == [1, 2, 3, 4]


async def test_standalone_events_signed_with_the_configured_secret(
    sqlite_url: str, receiver: Receiver
) -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(24))).decode()
    store = open_store(sqlite_url)
    try:
        async with EventOrchestrator(store, config(signing_secret=secret)) as o:
            await o.submit(DispatchEvent("sig1", "u", 1, b'{"raw": true}', receiver.url))
            assert await o.wait_idle(10)
    finally:
        store.close()
    (r,) = receiver.requests
    assert r.body == b'{"raw": true}' and r.headers["webhook-id"] == "sig1"
    assert verify_standard_webhook(secret, r.headers, r.body)


# -- idempotency across time ---------------------------------------------------------------------
async def test_resubmitting_a_completed_event_is_not_sent_again(
    store: Store, receiver: Receiver
) -> None:
    async with EventOrchestrator(store, config()) as o:
        assert await o.submit(ev("once", "u", 1, receiver))
        assert await o.wait_idle(10)
        assert not await o.submit(ev("once", "u", 1, receiver))
        assert not await o.submit(DispatchEvent("once", "other", 9, b"{}", receiver.url))
        await asyncio.sleep(0.2)
        assert await o.wait_idle(10)
        assert await state_of(o, "once") is DeliveryState.COMPLETED
    assert receiver.ids() == ["once"]
    with pytest.raises(ConflictError):
        async with EventOrchestrator(store, config()) as o2:
            await o2.submit(ev("another", "u", 1, receiver))  # sequence 1 of u is taken


async def test_expired_lease_of_a_dead_process_is_reclaimed(
    store: Store, receiver: Receiver
) -> None:
    async with store.deliveries() as repo:
        o = EventOrchestrator(store, config(), repository=repo)
        await o.submit(ev("l1", "u", 1, receiver))
        await o.submit(ev("l2", "u", 2, receiver))
        # A process that claimed l1 and died: its lease runs 0.6 s.
        (claimed,) = await repo.claim("dead-process", 10, 600_000)
        assert claimed.delivery_id == "l1" and claimed.attempts == 1
        assert await repo.claim("someone-else", 10, 600_000) == []  # l1 held, l2 blocked
        async with o:
            await asyncio.sleep(0.3)
            assert receiver.ids() == []  # not before the lease expires
            info = await o.get_delivery("l1")
            assert info is not None and info.lease_owner == "dead-process"
            assert await o.wait_idle(10)
        # The dead process's late outcome is refused: it no longer holds the lease.
        from eventledger.store.deliveries import DeliveryResult

        late = DeliveryResult(delivery_id="l1", state=DeliveryState.DEAD_LETTER)
        assert await repo.record("dead-process", [late]) == 0
        info = await repo.get("l1")
        assert info is not None and info.state is DeliveryState.COMPLETED and info.attempts == 2
    assert receiver.ids() == ["l1", "l2"]


async def test_a_sequence_gap_is_visible_and_counted_not_silent(
    store: Store, receiver: Receiver
) -> None:
    async with EventOrchestrator(store, config()) as o:
        await o.submit(ev("g2", "u", 2, receiver))
        assert await o.wait_idle(5)  # nothing can move: idle, but blocked
        info = await o.get_delivery("g2")
        assert info is not None and info.blocked_by == {"sequence": 1, "state": "MISSING"}
        assert await o.refresh_blocked() == 1
        assert info.to_dict()["blocked_by"] == {"sequence": 1, "state": "MISSING"}
        await o.submit(ev("g1", "u", 1, receiver))
        assert await o.wait_idle(5)
        assert await o.refresh_blocked() == 0
    assert receiver.ids() == ["g1", "g2"]


async def test_private_targets_are_refused_unless_allowed(
    sqlite_url: str, receiver: Receiver
) -> None:
    store = open_store(sqlite_url)
    try:
        async with EventOrchestrator(store, config(allow_private_targets=False)) as o:
            with pytest.raises(TargetRefusedError):
                await o.submit(ev("p1", "u", 1, receiver))  # 127.0.0.1 literal
            with pytest.raises(TargetRefusedError):
                await o.submit(DispatchEvent("p2", "u", 1, b"{}", "ftp://example.test/"))
            # A name resolving to loopback is refused when sent: dead letter with the reason.
            name_url = f"http://localhost:{receiver.port}/hook"
            assert await o.submit(DispatchEvent("p3", "u", 1, b"{}", name_url))
            assert await o.wait_idle(10)
            info = await o.get_delivery("p3")
            assert info is not None and info.state is DeliveryState.DEAD_LETTER
            assert info.last_error is not None and "non-public" in info.last_error
    finally:
        store.close()
    assert receiver.ids() == []


async def test_order_holds_under_random_failures_with_two_orchestrators(
    store_url: str, receiver: Receiver
) -> None:
    import random

    rng = random.Random(42)

    async def flaky(rx: Receiver, r: Received, n: int) -> web.Response:
        await asyncio.sleep(rng.random() * 0.01)
        return web.Response(status=500 if rng.random() < 0.2 else 200)

    receiver.behaviour = flaky
    s1, s2 = open_store(store_url), open_store(store_url)
    policy = RetryPolicy(initial=0.005, maximum=0.02, jitter=0.1, max_attempts=50)
    try:
        async with (
            EventOrchestrator(s1, config(retry=policy)) as a,
            EventOrchestrator(s2, config(retry=policy)) as b,
        ):
            events = [
                ev(f"o{u}-{s}", f"u{u}", s, receiver) for s in range(1, 11) for u in range(20)
            ]
            await asyncio.gather(*((a if i % 2 else b).submit(e) for i, e in enumerate(events)))
            assert await a.wait_idle(30) and await b.wait_idle(30)
    finally:
        s1.close()
        s2.close()
    ok = receiver.succeeded()
    assert sorted(ok) == sorted(e.event_id for e in events)  # each succeeded exactly once
    for u in range(20):
        # Every request for the entity (failed or not) came in sequence order.
        seqs = [int(i.split("-")[1]) for i in receiver.ids() if i.startswith(f"o{u}-")]
        assert seqs == sorted(seqs)


async def test_a_hanging_host_does_not_stall_other_hosts_with_few_workers(
    sqlite_url: str,
) -> None:
    hanging = await Receiver("127.0.0.1").start()
    healthy = await Receiver("127.0.0.2").start()

    async def hang(rx: Receiver, r: Received, n: int) -> web.Response:
        await asyncio.sleep(5)  # longer than the request timeout: every attempt times out
        return web.Response(status=200)

    hanging.behaviour = hang
    store = open_store(sqlite_url)
    # Few workers and small claims: the hanging host's rows alone could fill every claim.
    cfg = config(
        workers=4,
        claim_batch_size=10,
        request_timeout=1.0,
        retry=RetryPolicy(initial=5.0, jitter=0.0),
    )
    try:
        async with EventOrchestrator(store, cfg) as o:
            for i in range(60):
                await o.submit(DispatchEvent(f"h{i}", f"h{i}", 1, b"{}", hanging.url))
            await hanging.wait_for(3)
            started = time.monotonic()
            for i in range(40):
                await o.submit(DispatchEvent(f"ok{i}", f"ok{i}", 1, b"{}", healthy.url))
            await healthy.wait_for(40, within=10)
            took = time.monotonic() - started
            assert hanging.max_active <= 3  # workers - 1: one worker always stays free
            assert o.metrics.released > 0  # the stalled host's queue was given back
            await o.stop(drain=2.0)
    finally:
        store.close()
        await hanging.close()
        await healthy.close()
    assert took < 3.0, f"the healthy host waited {took:.1f}s behind the hanging one"
    assert sorted(healthy.ids()) == sorted(f"ok{i}" for i in range(40))


async def test_the_connection_itself_refuses_names_resolving_to_private_addresses(
    receiver: Receiver,
) -> None:
    from eventledger.dispatch.transport import PublicOnlyResolver, Transport

    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="non-public"):
            await resolver.resolve("localhost", receiver.port)
    finally:
        await resolver.close()
    transport = Transport(request_timeout=2.0, per_host=5, total=10, allow_private=False)
    await transport.open()
    try:
        # Even if the check before the request were bypassed (a name re-resolved meanwhile),
        # the connector does not connect to a private address.
        transport.guard.allow_private = True
        result = await transport.post(f"http://localhost:{receiver.port}/hook", "id1", b"{}", None)
    finally:
        await transport.close()
    assert not result.ok and result.error is not None and "connection error" in result.error
    assert receiver.ids() == []
