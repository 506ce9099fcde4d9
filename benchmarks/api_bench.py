"""Benchmark: the HTTP API against the library, in one run, JSON out.

    python benchmarks/api_bench.py                       # 3 x 33,333 events, 4,000 summaries
    python benchmarks/api_bench.py --events 20000 --summary-requests 1000   # quick

1. Ingest throughput: the same events, in batches of ``--batch`` (1,000), through
   ``Ledger.process`` in this process (the baseline) and through ``POST /v1/events`` (a JSON
   array per batch, one keep-alive connection) to a real ``eventledger serve --role api``
   (uvicorn) subprocess. Each path has its own fresh SQLite file. The events are split into
   ``--rounds`` rounds run back to back (library, then HTTP, with the same events and the
   same database size), because the machine is shared: the median round is the figure.
   Goal: HTTP >= 50% of the library's events/s.
2. Summary latency: ``GET /v1/users/{id}/summary`` for random users of the ingested set,
   sent open-loop at ``--rate`` (200) requests/s (a request is sent on schedule whether or not
   earlier ones finished; latency is measured from its scheduled time, so a stall is not
   hidden). Goal: p99 <= 10 ms. p99.9 and max are reported too.

Every loop is bounded in count and in time (``--max-seconds`` per phase). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from eventledger import Ledger

INGEST_GOAL_RATIO = 0.5
SUMMARY_GOAL_P99_MS = 10.0


def make_batches(
    n: int, batch: int, users: int, seed: int = 11, prefix: str = "e"
) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    base_ms = int((now - timedelta(days=7)).timestamp() * 1000)
    span_ms = 7 * 86_400_000 - 60_000
    events = []
    for i in range(n):
        kind = rng.choice(("click", "view", "view", "purchase"))
        ev: dict[str, Any] = {
            "event_id": f"{prefix}{i}",
            "user_id": f"user-{int(rng.paretovariate(1.2)) % users}",
            "type": kind,
            "timestamp": base_ms + rng.randrange(span_ms),
            "metadata": {"page": f"/p/{rng.randrange(500)}", "ref": "bench"},
        }
        if kind == "purchase":
            ev["metadata"]["price"] = round(rng.uniform(1, 500), 2)
        events.append(ev)
    return [events[i : i + batch] for i in range(0, n, batch)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "EVENTLEDGER_API_TOKEN"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventledger", "serve", "--role", "api", "--db", db_url,
             "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start in 30 s")


def library_ingest(
    db_url: str, batches: list[list[dict[str, Any]]], max_s: float
) -> dict[str, Any]:
    with Ledger(db_url) as ledger:
        done = applied = 0
        start = time.perf_counter()
        for batch in batches:
            report = ledger.process(batch)
            done += report.total
            applied += report.applied
            if time.perf_counter() - start > max_s:
                break
        elapsed = time.perf_counter() - start
    return {"events": done, "applied": applied, "seconds": round(elapsed, 3),
            "events_per_s": round(done / elapsed)}  # fmt: skip


def http_ingest(base: str, batches: list[list[dict[str, Any]]], max_s: float) -> dict[str, Any]:
    bodies = [orjson.dumps(b) for b in batches]  # serialised before timing, like the dicts
    done = applied = 0
    with httpx.Client(base_url=base, timeout=120) as client:
        start = time.perf_counter()
        for body in bodies:
            r = client.post(
                "/v1/events", content=body, headers={"content-type": "application/json"}
            )
            r.raise_for_status()
            report = orjson.loads(r.content)
            done += report["total"]
            applied += report["applied"]
            if time.perf_counter() - start > max_s:
                break
        elapsed = time.perf_counter() - start
    return {"events": done, "applied": applied, "seconds": round(elapsed, 3),
            "events_per_s": round(done / elapsed)}  # fmt: skip


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def summary_load(
    base: str, users: list[str], n: int, rate: float, max_s: float
) -> dict[str, Any]:
    rng = random.Random(5)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        # Warm-up: connections, caches, the server's thread pool.
        for user in users[:50]:
            async with session.get(f"/v1/users/{user}/summary") as resp:
                await resp.read()

        async def one(user: str, scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.get(f"/v1/users/{user}/summary") as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - scheduled)

        tasks = []
        start = time.perf_counter()
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - start > max_s:
                break
            tasks.append(asyncio.create_task(one(rng.choice(users), scheduled)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=max_s + 30)
        elapsed = time.perf_counter() - start
    ms = sorted(v * 1000 for v in latencies)
    return {
        "requests": len(ms),
        "errors": errors,
        "target_rate_per_s": rate,
        "achieved_rate_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p90_ms": round(percentile(ms, 0.90), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "p999_ms": round(percentile(ms, 0.999), 3),
        "max_ms": round(ms[-1], 3) if ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--summary-requests", type=int, default=4_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="ingest rounds, library and HTTP alternating (the machine is shared and noisy: "
        "the median round is the figure)",
    )
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound per phase")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    per_round = max(1, args.events // args.rounds)
    rounds = [
        make_batches(per_round, args.batch, args.users, prefix=f"r{r}-") for r in range(args.rounds)
    ]
    users = sorted({e["user_id"] for batches in rounds for b in batches for e in b})
    libs: list[dict[str, Any]] = []
    https: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        proc, base = start_server(f"sqlite:///{tmp}/http.db", Path(tmp) / "server.log")
        try:
            for batches in rounds:
                # Same events, same growing database size on both paths, back to back.
                libs.append(
                    library_ingest(f"sqlite:///{tmp}/library.db", batches, args.max_seconds)
                )
                https.append(http_ingest(base, batches, args.max_seconds))
            summary = asyncio.run(
                summary_load(base, users, args.summary_requests, args.rate, args.max_seconds)
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ratios = sorted(
        h["events_per_s"] / lib["events_per_s"] for lib, h in zip(libs, https, strict=True)
    )
    ratio = ratios[len(ratios) // 2]
    lib = sorted(libs, key=lambda x: x["events_per_s"])[len(libs) // 2]
    http = sorted(https, key=lambda x: x["events_per_s"])[len(https) // 2]
    result = {
        "benchmark": "api",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },  # fmt: skip
        "config": {
            "events": per_round * args.rounds,
            "rounds": args.rounds,
            "batch": args.batch,
            "users": len(users),
            "store": "sqlite",
        },  # fmt: skip
        "ingest": {
            "library_baseline": lib,
            "http": http,
            "http_vs_library": round(ratio, 3),
            "per_round": [
                {
                    "library_events_per_s": a["events_per_s"],
                    "http_events_per_s": b["events_per_s"],
                    "http_vs_library": round(b["events_per_s"] / a["events_per_s"], 3),
                }
                for a, b in zip(libs, https, strict=True)
            ],  # fmt: skip
            "goal_ratio": INGEST_GOAL_RATIO,
            "goal_met": ratio >= INGEST_GOAL_RATIO,
        },
        "summary_latency": {
            **summary,
            "goal_p99_ms": SUMMARY_GOAL_P99_MS,
            "goal_met": summary["errors"] == 0 and summary["p99_ms"] <= SUMMARY_GOAL_P99_MS,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
