"""``eventledger demo``: generated untrusted events through the whole pipeline."""

from __future__ import annotations

import argparse
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

from .ledger import Ledger


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


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    run = uuid.uuid4().hex[:8]
    received_at = datetime.now(UTC)
    events = demo_events(run, received_at, random.Random(run))
    with Ledger(args.db) as ledger:
        console.rule("[bold]eventledger demo")
        console.print(f"store: {ledger.store.url}   batch of {len(events)} events")
        report = ledger.process(events, received_at=received_at)
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
            console.print(f"\n[bold]activity of {user}")
            console.print_json(orjson.dumps(ledger.activity(user)).decode())
            console.print(f"summary: {ledger.fetch_user_activity_summary(user)}")
    return 0 if report.balanced else 3
