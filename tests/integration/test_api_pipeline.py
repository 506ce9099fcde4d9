"""End to end: events ingested over HTTP by a real ``eventledger serve`` process reach a real
aiohttp receiver in per-user order, exactly once; dead letters are resolved through the API.

The receiver runs in the test's event loop; the service is a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the receiver ------------------------------------------------------------------------------
@dataclass
class Receiver:
    """Webhook receiver: ``/hooks/{name}``; a name in ``failing`` answers 500."""

    port: int = 0
    failing: set[str] = field(default_factory=set)
    delays: dict[str, float] = field(default_factory=dict)  # seconds before answering
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (name, webhook-id)
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    headers: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        self.attempts.append((name, request.headers.get("webhook-id", "")))
        await asyncio.sleep(self.delays.get(name, 0.0))
        if name in self.failing:
            return web.Response(status=500, text="receiver is down")
        payload = orjson.loads(body)
        payload["_raw"] = body
        self.accepted[name].append(payload)
        self.headers[name].append(dict(request.headers))
        return web.Response(status=200)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{name}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{name}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = int(runner.addresses[0][1])
    yield rec
    await runner.cleanup()


# -- the service -------------------------------------------------------------------------------
@dataclass
class Service:
    base: str
    proc: asyncio.subprocess.Process
    log: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=30)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                raise
        assert self.proc.returncode is not None
        return self.proc.returncode


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    started: list[Service] = []
    db = f"sqlite:///{tmp_path / 'pipeline.db'}"

    async def start(*args: str, db_url: str = db) -> Service:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "eventledger", "serve", "--db", db_url, "--port", str(port),
                "--log-level", "warning", "--allow-private-targets", *args,
                env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        service = Service(f"http://127.0.0.1:{port}", proc, log)
        started.append(service)
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=service.base, timeout=1) as client:
            while time.monotonic() < deadline:
                if proc.returncode is not None:
                    raise AssertionError(f"serve exited: {log.read_text()}")
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return service
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"serve did not answer in 30 s: {log.read_text()}")

    yield start
    codes = [await s.stop() for s in started]
    assert codes == [0] * len(codes), [s.log.read_text() for s in started]


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def event(event_id: str, user: str, minute: int, kind: str = "view") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "type": kind,
        "timestamp": f"2024-05-01T10:{minute:02d}:00Z",
    }


def metric(text: str, name: str, label: str, value: str) -> float:
    m = re.search(rf'^{name}\{{{label}="{value}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(headers["webhook-signature"], "v1," + mac)


# -- tests -------------------------------------------------------------------------------------
async def test_events_reach_the_receiver_in_user_order_exactly_once(
    serve: ServiceFactory, receiver: Receiver
) -> None:
    service = await serve("--role", "all", "--workers", "8")
    users = [f"user-{i}" for i in range(8)]
    async with service.client() as c:
        r = await c.post("/v1/endpoints", json={"url": receiver.url("ok")})
        assert r.status_code == 201
        secret = r.json()["secret"]
        filtered = await c.post(
            "/v1/endpoints", json={"url": receiver.url("purchases"), "event_types": ["purchase"]}
        )
        assert filtered.status_code == 201
        applied: dict[str, list[str]] = defaultdict(list)  # user -> event ids, apply order
        purchases = 0
        for b in range(4):
            batch: list[Any] = []
            for i in range(50):
                n = b * 50 + i
                kind = "purchase" if n % 7 == 0 else "view"
                ev = event(f"e2e-{n}", users[n % len(users)], 59 - (n % 60), kind)
                if kind == "purchase":
                    ev["metadata"] = {"price": 1.5}
                batch.append(ev)
            batch.append(dict(batch[3]))  # a duplicate: never delivered twice
            batch.append({"event_id": f"bad-{b}", "user_id": users[0], "type": "Nope"})
            r = await c.post("/v1/events", json=batch)
            assert r.status_code == 200, r.text
            report = r.json()
            assert report["applied"] == 50 and report["duplicates"] == 1
            for o in report["outcomes"]:
                if o["outcome"] == "applied":
                    applied[o["user_id"]].append(o["event_id"])
            purchases += sum(1 for e in batch[:50] if e["type"] == "purchase")
        total = sum(len(v) for v in applied.values())

        async def all_received() -> bool:
            return len(receiver.accepted["ok"]) >= total and (
                len(receiver.accepted["purchases"]) >= purchases
            )

        await eventually(all_received, f"{total} deliveries received")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now

        got = receiver.accepted["ok"]
        ids = Counter(p["event_id"] for p in got)
        assert len(got) == total and max(ids.values()) == 1  # exactly once
        by_user: dict[str, list[str]] = defaultdict(list)
        for p in got:
            by_user[p["user_id"]].append(p["event_id"])
            assert p["sequence"] == len(by_user[p["user_id"]])  # 1, 2, 3... per user
        assert by_user == applied  # in each user's apply order
        assert all(
            signature_ok(secret, h, p["_raw"])
            for h, p in zip(receiver.headers["ok"], got, strict=True)
        )
        assert {h["webhook-id"] for h in receiver.headers["ok"]} == set(ids)
        only = receiver.accepted["purchases"]
        assert len(only) == purchases and all(p["type"] == "purchase" for p in only)

        async def all_recorded() -> bool:
            # The receiver answered; the dispatcher records the outcome just after.
            r = await c.get("/v1/deliveries", params={"state": "COMPLETED", "limit": 1000})
            assert r.status_code == 200
            return len(r.json()) == total + purchases

        await eventually(all_recorded, "every delivery recorded COMPLETED")
        metrics = (await c.get("/metrics")).text
        assert metric(metrics, "eventledger_deliveries", "state", "COMPLETED") == total + purchases
        assert metric(metrics, "eventledger_deliveries", "state", "PENDING") == 0
        succeeded = metric(metrics, "eventledger_dispatcher_events_total", "kind", "succeeded")
        assert succeeded == total + purchases
        assert (await c.get("/healthz")).json()["dispatcher"] == "running"


async def test_dead_letter_is_resolved_through_the_api(
    serve: ServiceFactory, receiver: Receiver
) -> None:
    receiver.failing.add("down")
    service = await serve(
        "--role", "all", "--max-attempts", "2", "--retry-initial", "0.05", "--retry-maximum", "0.1"
    )  # fmt: skip
    async with service.client() as c:
        r = await c.post("/v1/endpoints", json={"url": receiver.url("down")})
        ep = r.json()["endpoint_id"]
        batch = [
            event("a1", "alice", 1),
            event("a2", "alice", 2),
            event("a3", "alice", 3),
            event("b1", "bob", 1),
            event("b2", "bob", 2),
        ]
        assert (await c.post("/v1/events", json=batch)).json()["applied"] == 5

        async def two_dead() -> bool:
            r = await c.get("/v1/deliveries", params={"state": "DEAD_LETTER"})
            return len(r.json()) == 2

        await eventually(two_dead, "a1 and b1 in DEAD_LETTER")
        dead = (await c.get("/v1/deliveries", params={"state": "dead_letter"})).json()
        assert sorted(d["delivery_id"] for d in dead) == [f"{ep}/a1", f"{ep}/b1"]
        assert all(d["attempts"] == 2 and "500" in (d["last_error"] or "") for d in dead)
        # Their successors wait, never attempted: order is kept behind a dead letter.
        a2 = (await c.get(f"/v1/deliveries/{ep}/a2")).json()
        assert a2["state"] == "PENDING" and a2["blocked_by"]["state"] == "DEAD_LETTER"
        assert {wid for _, wid in receiver.attempts} == {"a1", "b1"}

        async def counted() -> bool:
            text = (await c.get("/metrics")).text
            return (
                metric(text, "eventledger_deliveries", "state", "DEAD_LETTER") == 2
                and metric(text, "eventledger_dispatcher_events_total", "kind", "dead_lettered")
                == 2
            )

        await eventually(counted, "/metrics shows the 2 dead letters")

        # Operator errors are specific.
        r = await c.post(f"/v1/deliveries/{ep}/a2/retry")
        assert r.status_code == 409 and "DEAD_LETTER" in r.json()["reason"]
        r = await c.post(f"/v1/deliveries/{ep}/nope/skip")
        assert r.status_code == 404 and "nope" in r.json()["reason"]
        r = await c.get("/v1/deliveries", params={"state": "LOST"})
        assert r.status_code == 400 and "DEAD_LETTER" in r.json()["reason"]

        # Skip b1: bob moves on (the receiver is fixed meanwhile).
        receiver.failing.clear()
        r = await c.post(f"/v1/deliveries/{ep}/b1/skip")
        assert r.status_code == 200 and r.json()["state"] == "SKIPPED"

        async def bob_done() -> bool:
            r = await c.get(f"/v1/deliveries/{ep}/b2")
            return bool(r.json()["state"] == "COMPLETED")

        await eventually(bob_done, "b2 delivered after b1 was skipped")
        # Retry a1: alice's deliveries go, in order.
        r = await c.post(f"/v1/deliveries/{ep}/a1/retry")
        assert r.status_code == 200 and r.json()["state"] in ("PENDING", "IN_FLIGHT", "COMPLETED")

        async def alice_done() -> bool:
            r = await c.get(f"/v1/deliveries/{ep}/a3")
            return bool(r.json()["state"] == "COMPLETED")

        await eventually(alice_done, "a1..a3 delivered after the retry")
        assert [p["event_id"] for p in receiver.accepted["down"]] in (
            ["b2", "a1", "a2", "a3"],
            ["a1", "b2", "a2", "a3"],
            ["a1", "a2", "b2", "a3"],
            ["a1", "a2", "a3", "b2"],
        )
        metrics = (await c.get("/metrics")).text
        assert metric(metrics, "eventledger_deliveries", "state", "COMPLETED") == 4
        assert metric(metrics, "eventledger_deliveries", "state", "SKIPPED") == 1
        assert metric(metrics, "eventledger_deliveries", "state", "DEAD_LETTER") == 0


async def test_api_and_worker_roles_in_separate_processes(
    serve: ServiceFactory, receiver: Receiver, store_url: str
) -> None:
    """On both backends; on PostgreSQL this is how the roles scale out across hosts."""
    api = await serve("--role", "api", db_url=store_url)
    worker = await serve("--role", "worker", db_url=store_url)
    async with api.client() as c, worker.client() as w:
        assert "dispatcher" not in (await c.get("/healthz")).json()
        assert (await w.get("/healthz")).json() == {
            "status": "ok",
            "role": "worker",
            "dispatcher": "running",
        }
        r = await w.post("/v1/events", json=[event("x", "u", 1)])
        assert r.status_code == 404  # a worker serves no API
        assert (await w.get("/metrics")).status_code == 200
        await c.post("/v1/endpoints", json={"url": receiver.url("split")})
        r = await c.post("/v1/events", json=[event(f"s{i}", "u", i) for i in range(20)])
        assert r.json()["applied"] == 20

        async def delivered() -> bool:
            return len(receiver.accepted["split"]) == 20

        await eventually(delivered, "the worker process delivered what the api stored")
        assert [p["event_id"] for p in receiver.accepted["split"]] == [f"s{i}" for i in range(20)]

        async def counted() -> bool:
            text = (await w.get("/metrics")).text
            return metric(text, "eventledger_dispatcher_events_total", "kind", "succeeded") == 20

        await eventually(counted, "the worker's metrics count 20 successes")
        api_metrics = (await c.get("/metrics")).text
        assert "eventledger_dispatcher_events_total" not in api_metrics


async def test_sigterm_lets_the_request_in_flight_finish_and_records_it(
    serve: ServiceFactory, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.delays["slow"] = 1.0
    service = await serve("--role", "all")
    async with service.client() as c:
        await c.post("/v1/endpoints", json={"url": receiver.url("slow")})
        assert (await c.post("/v1/events", json=[event("t1", "u", 1)])).json()["applied"] == 1

    async def in_flight() -> bool:
        return len(receiver.attempts) == 1

    await eventually(in_flight, "the delivery request started")
    assert not receiver.accepted["slow"]
    assert await service.stop() == 0  # SIGTERM while the receiver is still answering
    assert [p["event_id"] for p in receiver.accepted["slow"]] == ["t1"]
    with sqlite3.connect(tmp_path / "pipeline.db") as conn:
        rows = conn.execute("SELECT state, lease_owner FROM deliveries").fetchall()
    assert rows == [("COMPLETED", None)]  # recorded, not left IN_FLIGHT for a lease to expire
