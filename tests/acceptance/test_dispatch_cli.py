"""``eventledger dispatch`` and ``eventledger dlq`` as an operator runs them (subprocesses).

The receiver runs in the test's event loop on 127.0.0.1; the dispatcher is a real
``python -m eventledger dispatch`` process, stopped with SIGTERM or killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from eventledger import Ledger
from eventledger.store import open_store
from eventledger.store.deliveries import DeliveryResult, DeliveryState, NewDelivery


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )


class Receiver:
    """Records (webhook-id, body); every answer is 200 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.active = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.received.append((request.headers["webhook-id"], body))
        self.active += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return web.Response(status=200)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def slow_receiver() -> AsyncIterator[Receiver]:
    rx = Receiver(delay=0.8)
    await rx.start()
    yield rx
    await rx.close()


def make_deliveries(db: str, url: str, users: int, per_user: int) -> str:
    """Register an endpoint and process events: PENDING deliveries. Returns the endpoint id."""
    with Ledger(db) as ledger:
        endpoint = ledger.add_endpoint(url)
        ledger.process(
            {"event_id": f"ev-{u}-{s}", "user_id": f"user{u}", "type": "click",
             "timestamp": 1_700_000_000_000 + s}
            for s in range(1, per_user + 1)
            for u in range(users)
        )  # fmt: skip
    return endpoint.endpoint_id


async def dispatcher(db: str, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventledger", "dispatch", "--db", db,
        "--allow-private-targets", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip


async def counts(db: str) -> dict[str, int]:
    store = open_store(db)
    try:
        async with store.deliveries() as repo:
            return await repo.counts()
    finally:
        store.close()


async def rows(db: str) -> dict[str, DeliveryState]:
    store = open_store(db)
    try:
        async with store.deliveries() as repo:
            return {d.webhook_id: d.state for d in await repo.list_deliveries(limit=1000)}
    finally:
        store.close()


async def until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_sigterm_finishes_requests_in_flight_records_them_and_exits_0(
    tmp_path: Path, slow_receiver: Receiver
) -> None:
    db = f"sqlite:///{tmp_path / 'd.db'}"
    make_deliveries(db, slow_receiver.url, users=40, per_user=1)
    proc = await dispatcher(db, "--workers", "10")
    try:

        async def in_flight() -> bool:
            return slow_receiver.active >= 5

        await until(in_flight, 20, "requests in flight")
        received_at_signal = len(slow_receiver.received)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err.decode()
        assert time.monotonic() - started < 5.0  # drained within a request's time
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"Traceback" not in err
    state = await rows(db)
    seen = {webhook_id for webhook_id, _body in slow_receiver.received}
    # No new request after the signal, and every request in flight was finished and recorded.
    assert len(slow_receiver.received) == received_at_signal
    assert {k for k, v in state.items() if v is DeliveryState.COMPLETED} == seen
    assert (await counts(db))["IN_FLIGHT"] == 0
    assert len(seen) + (await counts(db))["PENDING"] == 40


async def test_sigkill_mid_flight_then_restart_loses_nothing(tmp_path: Path) -> None:
    rx = Receiver(delay=0.3)
    await rx.start()
    db = f"sqlite:///{tmp_path / 'k.db'}"
    make_deliveries(db, rx.url, users=10, per_user=6)
    args = ("--workers", "11", "--lease", "2", "--request-timeout", "1")
    first = await dispatcher(db, *args)
    try:

        async def some_received() -> bool:
            return len(rx.received) >= 15 and rx.active > 0

        await until(some_received, 20, "first deliveries")
        first.kill()
        await first.wait()
        in_flight_at_kill = {k for k, v in (await rows(db)).items() if v is DeliveryState.IN_FLIGHT}
        assert in_flight_at_kill, "the kill should have caught requests in flight"
        second = await dispatcher(db, *args)
        try:

            async def all_done() -> bool:
                return (await counts(db))["COMPLETED"] == 60

            await until(all_done, 30, "every delivery COMPLETED after the restart")
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 15)
            assert second.returncode == 0
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        await rx.close()
    sent = Counter(webhook_id for webhook_id, _b in rx.received)
    expected = {f"ev-{u}-{s}" for u in range(10) for s in range(1, 7)}
    assert set(sent) == expected  # nothing lost
    twice = {k for k, n in sent.items() if n > 1}
    assert twice <= in_flight_at_kill  # only what was in flight at the kill went twice
    assert all(n <= 2 for n in sent.values())
    for u in range(10):  # per user, first receipts in sequence order
        firsts: list[int] = []
        for _webhook_id, body in rx.received:
            if body["user_id"] == f"user{u}" and body["sequence"] not in firsts:
                firsts.append(body["sequence"])
        assert firsts == [1, 2, 3, 4, 5, 6]


def test_dlq_list_retry_skip(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'q.db'}"

    async def dead_letter(*ids: str) -> None:
        store = open_store(db)
        try:
            async with store.deliveries() as repo:
                await repo.insert(
                    [
                        NewDelivery(delivery_id=i, webhook_id=i, entity_key=f"ent-{i}",
                                    sequence=1, target_url="http://127.0.0.1:9/x", payload=b"{}")
                        for i in ids
                    ]
                )  # fmt: skip
                claimed = await repo.claim("op", 10, 10_000_000)
                await repo.record(
                    "op",
                    [
                        DeliveryResult(delivery_id=c.delivery_id, state=DeliveryState.DEAD_LETTER,
                                       last_error="HTTP 500", last_status=500)
                        for c in claimed
                    ],
                )  # fmt: skip
        finally:
            store.close()

    asyncio.run(dead_letter("d1", "d2"))
    listed = run("dlq", "list", "--json", "--db", db)
    assert listed.returncode == 0, listed.stderr
    doc = orjson.loads(listed.stdout)
    assert doc["state"] == "DEAD_LETTER"
    assert sorted(d["delivery_id"] for d in doc["deliveries"]) == ["d1", "d2"]
    assert all(d["last_error"] == "HTTP 500" for d in doc["deliveries"])

    retried = run("dlq", "retry", "d1", "--db", db)
    assert retried.returncode == 0, retried.stderr
    assert "PENDING" in retried.stdout and "attempts=0" in retried.stdout
    skipped = run("dlq", "skip", "d2", "--db", db)
    assert skipped.returncode == 0 and "SKIPPED" in skipped.stdout

    again = run("dlq", "skip", "d1", "--db", db)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "eventledger: error: cannot skip delivery 'd1': it is PENDING, not DEAD_LETTER"
    ]
    unknown = run("dlq", "retry", "nope", "--db", db)
    assert unknown.returncode == 1 and "unknown delivery 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad_state = run("dlq", "list", "--state", "bogus", "--db", db)
    assert bad_state.returncode == 1 and "unknown delivery state" in bad_state.stderr
    everything = run("dlq", "list", "--state", "all", "--db", db)
    assert everything.returncode == 0
    assert "d1\tPENDING" in everything.stdout and "d2\tSKIPPED" in everything.stdout
