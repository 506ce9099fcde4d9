"""``eventledger demo``: generated untrusted events through the whole pipeline.

It starts a webhook receiver on 127.0.0.1 (a random port) in this process, registers it as
two endpoints (one answers 503 to its first requests, so retries show), processes a batch
with duplicates, corrected retries, out-of-order and malformed events, runs the dispatcher
until this run's deliveries are done (bounded wait), and prints the audit report, two users'
activity and summaries, and the delivery outcome as the store and the receiver see it. The
receiver's view is checked (per-user order, no duplicates, valid signatures), not assumed.

Each run uses fresh event ids and fresh endpoints (those of earlier demo runs, whose receivers
are gone, are removed first), so it can be run again and again on the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .ledger import Ledger
from .model import Report
from .store.base import Endpoint

DEMO_ENDPOINT_PREFIX = "ep_demo_"
FLAKY_FAILURES = 3  # the flaky endpoint answers 503 to this many requests first
DELIVERY_WAIT_S = 20.0  # bound on waiting for this run's deliveries


def demo_events(run: str, received_at: datetime, rng: random.Random) -> list[Any]:
    """A batch with every kind of trouble: duplicates, corrected retries, out-of-order
    timestamps, malformed lines, blank and invalid user ids."""
    users = [f"demo-{run}-alice", f"demo-{run}-bob", f"demo-{run}-carol"]
    events: list[Any] = []
    base = received_at - timedelta(hours=1)
    for i in range(60):
        user = users[i % len(users)]
        kind = rng.choice(["click", "view", "view", "purchase"])
        ts = base + timedelta(seconds=rng.randint(0, 3000))  # shuffled: out of order
        event: dict[str, Any] = {
            "event_id": f"{run}-{i}",
            "user_id": user,
            "type": kind,
            "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "metadata": {"page": f"/p/{rng.randint(1, 9)}"},
        }
        if kind == "purchase":
            event["metadata"]["price"] = round(rng.uniform(1, 100), 2)
        events.append(event)
    # Client retries: exact duplicates, and one with changed content.
    events.append(dict(events[3]))
    events.append(dict(events[7]))
    changed = dict(events[10])
    changed["metadata"] = {"page": "/changed"}
    events.append(changed)
    # A purchase rejected for its price, then retried with the price corrected.
    bad = {
        "event_id": f"{run}-retry",
        "user_id": users[0],
        "type": "purchase",
        "timestamp": (base + timedelta(minutes=5)).isoformat(),
        "metadata": {"price": "N/A"},
    }
    events.append(bad)
    events.append(dict(bad, metadata={"price": "19.99"}))
    # Malformed input of several kinds.
    events.append(b'{"event_id": "broken", "user_id":')
    events.append(b"[1, 2, 3]")
    events.append(
        {
            "event_id": f"{run}-nouser",
            "user_id": "   ",
            "type": "click",
            "timestamp": base.isoformat(),
        }
    )
    events.append(
        {
            "event_id": f"{run}-badtype",
            "user_id": users[1],
            "type": "Click!",
            "timestamp": base.isoformat(),
        }
    )
    events.append(
        {
            "event_id": f"{run}-future",
            "user_id": users[2],
            "type": "view",
            "timestamp": (received_at + timedelta(days=1)).isoformat(),
        }
    )
    events.append({"user_id": users[2], "type": "view", "timestamp": base.isoformat()})
    return events


# -- the receiver ------------------------------------------------------------------------------
def _signature_ok(secret: str, headers: Any, body: bytes) -> bool:
    """Standard Webhooks verification, written independently of the dispatcher's signer."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    given = headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected, g) for g in given)


@dataclass
class Inbox:
    """What one endpoint of the receiver saw."""

    secret: str
    fail_first: int = 0
    requests: int = 0
    refused: int = 0
    bad_signatures: int = 0
    accepted: list[tuple[str, str, int]] = field(default_factory=list)  # id, user, sequence

    def check(self, expected_ids: set[str]) -> dict[str, Any]:
        """The receiver's view, checked: every expected event once, in per-user order."""
        ids = Counter(webhook_id for webhook_id, _, _ in self.accepted)
        duplicates = sum(n - 1 for n in ids.values() if n > 1)
        last: dict[str, int] = {}
        out_of_order = 0
        for _, user, sequence in self.accepted:
            if sequence <= last.get(user, 0):
                out_of_order += 1
            last[user] = sequence
        missing = len(expected_ids - set(ids))
        unexpected = len(set(ids) - expected_ids)
        return {
            "received": len(self.accepted),
            "expected": len(expected_ids),
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "missing": missing,
            "unexpected": unexpected,
            "bad_signatures": self.bad_signatures,
            "refused_with_503": self.refused,
            "ok": duplicates == 0
            and out_of_order == 0
            and missing == 0
            and unexpected == 0
            and self.bad_signatures == 0,
        }


class Receiver:
    """An aiohttp webhook receiver on 127.0.0.1, one inbox per path."""

    def __init__(self) -> None:
        self.inboxes: dict[str, Inbox] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    async def _handle(self, request: web.Request) -> web.Response:
        inbox = self.inboxes.get(request.match_info["name"])
        if inbox is None:
            return web.Response(status=404)
        body = await request.read()
        inbox.requests += 1
        if inbox.refused < inbox.fail_first:
            inbox.refused += 1
            return web.Response(status=503, headers={"Retry-After": "1"})
        if not _signature_ok(inbox.secret, request.headers, body):
            inbox.bad_signatures += 1
            return web.Response(status=401)
        payload = orjson.loads(body)
        inbox.accepted.append(
            (request.headers["webhook-id"], str(payload["user_id"]), int(payload["sequence"]))
        )
        return web.Response(status=204)


# -- the run -----------------------------------------------------------------------------------
def _replace_demo_endpoints(ledger: Ledger, receiver: Receiver, run: str) -> list[Endpoint]:
    for old in ledger.store.list_endpoints():
        if old.endpoint_id.startswith(DEMO_ENDPOINT_PREFIX):
            ledger.store.remove_endpoint(old.endpoint_id)
    created = []
    for name, fail_first in (("audit", 0), ("flaky", FLAKY_FAILURES)):
        endpoint = ledger.add_endpoint(
            receiver.url(name), endpoint_id=f"{DEMO_ENDPOINT_PREFIX}{run}_{name}"
        )
        assert endpoint.secret is not None
        receiver.inboxes[name] = Inbox(secret=endpoint.secret, fail_first=fail_first)
        created.append(endpoint)
    return created


def _dispatcher_available() -> bool:
    try:
        from .dispatch import DispatchConfig, EventOrchestrator  # noqa: F401
    except ImportError:
        return False
    return True


async def _deliver(
    ledger: Ledger, expected: list[str], console: Console
) -> tuple[dict[str, int], int]:
    """Run the dispatcher until this run's deliveries are resolved (bounded); return their
    states and how many needed more than one attempt."""
    from .dispatch import DispatchConfig, EventOrchestrator, RetryPolicy

    config = DispatchConfig(
        workers=8,
        allow_private_targets=True,  # the receiver is on 127.0.0.1
        retry=RetryPolicy(initial=0.2, maximum=1.0, max_attempts=6),
    )
    repo = ledger.store.deliveries()
    states: dict[str, int] = {}
    retried = 0
    try:
        async with EventOrchestrator(ledger.store, config):
            deadline = time.monotonic() + DELIVERY_WAIT_S
            while True:
                found = [await repo.get(d) for d in expected]
                states = dict(Counter(str(i.state) if i else "MISSING" for i in found))
                done = all(
                    i is not None and str(i.state) in ("COMPLETED", "SKIPPED", "DEAD_LETTER")
                    for i in found
                )
                if done or time.monotonic() > deadline:
                    retried = sum(1 for i in found if i is not None and i.attempts > 1)
                    break
                await asyncio.sleep(0.1)
            if not done:
                console.print(f"[yellow]deliveries not done after {DELIVERY_WAIT_S:.0f} s")
    finally:
        await repo.close()
    return states, retried


async def _run(args: argparse.Namespace, console: Console) -> int:
    run = uuid.uuid4().hex[:8]
    received_at = datetime.now(UTC)
    events = demo_events(run, received_at, random.Random(run))
    receiver = Receiver()
    await receiver.start()
    try:
        ledger = await asyncio.to_thread(Ledger, args.db)
        try:
            return await _pipeline(ledger, receiver, run, events, received_at, console)
        finally:
            await asyncio.to_thread(ledger.close)
    finally:
        await receiver.stop()


async def _pipeline(
    ledger: Ledger,
    receiver: Receiver,
    run: str,
    events: list[Any],
    received_at: datetime,
    console: Console,
) -> int:
    deliver = _dispatcher_available()
    console.rule("[bold]eventledger demo")
    console.print(f"store: {ledger.store.url}   batch of {len(events)} events")
    endpoints: list[Endpoint] = []
    if deliver:
        endpoints = await asyncio.to_thread(_replace_demo_endpoints, ledger, receiver, run)
        for e in endpoints:
            console.print(f"endpoint {e.endpoint_id} -> {e.url}")
    report: Report = await asyncio.to_thread(ledger.process, events, received_at)

    from .cli import _render_report

    _render_report(report, console)
    for o in report.outcomes:
        if o.outcome.value != "applied":
            console.print(
                escape(
                    f"  #{o.index:<3} {o.outcome.value:<9} {o.reason or '':<20}"
                    f" {o.event_id or '-'}  {o.detail or ''}"
                )
            )
    for user in (f"demo-{run}-alice", f"demo-{run}-bob"):
        activity = await asyncio.to_thread(ledger.activity, user)
        summary = await asyncio.to_thread(ledger.fetch_user_activity_summary, user)
        console.print(f"\n[bold]activity of {user}")
        console.print_json(orjson.dumps(activity).decode())
        console.print(f"summary: {summary}")

    ok = report.balanced
    if not deliver:
        console.print("\n(the dispatcher is not installed: no deliveries in this demo)")
        return 0 if ok else 3

    applied_ids = {o.event_id for o in report.outcomes if o.outcome.value == "applied"}
    expected = [
        f"{e.endpoint_id}/{event_id}" for e in endpoints for event_id in applied_ids if event_id
    ]
    console.print(f"\n[bold]delivering {len(expected)} webhooks to {len(endpoints)} endpoints")
    start = time.monotonic()
    states, retried = await _deliver(ledger, expected, console)
    elapsed = time.monotonic() - start
    table = Table(title=f"deliveries by state, {elapsed:.1f} s")
    table.add_column("state")
    table.add_column("deliveries", justify="right")
    for state, n in sorted(states.items()):
        table.add_row(state, str(n))
    console.print(table)
    console.print(f"{retried} deliveries needed more than one attempt (retried after a 503)")
    ok = ok and states == {"COMPLETED": len(expected)}

    console.print("[bold]the receiver's view (checked, not assumed)")
    for name, inbox in receiver.inboxes.items():
        checked = inbox.check({event_id for event_id in applied_ids if event_id})
        ok = ok and checked["ok"]
        console.print(
            f"  {name}: received {checked['received']} of {checked['expected']}"
            f" | answered 503 first: {checked['refused_with_503']}"
            f" | duplicates {checked['duplicates']}"
            f" | out of order {checked['out_of_order']}"
            f" | missing {checked['missing']}"
            f" | bad signatures {checked['bad_signatures']}"
            f" | {'ok' if checked['ok'] else 'FAILED'}",
            soft_wrap=True,  # one line per endpoint, however narrow the terminal
        )
    console.print(
        "every applied event reached each endpoint exactly once, in per-user order"
        if ok
        else "[red]the delivery check FAILED (see above)"
    )
    return 0 if ok else 3


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    return asyncio.run(_run(args, console))
