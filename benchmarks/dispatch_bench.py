"""Benchmark: durable, ordered webhook delivery against the plain HTTP client ceiling.

One command, JSON out:

    python benchmarks/dispatch_bench.py                      # 20,000 events, SQLite (temp file)
    python benchmarks/dispatch_bench.py --db postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/dispatch_bench.py --events 2000 --entities 100   # quick

A receiver runs in a separate process (so it does not share the dispatcher's core) on
127.0.0.1 and checks, per entity, that sequences arrive 1, 2, 3... and that no webhook-id
arrives twice. In the same run:

- ceiling: plain aiohttp POSTs of the same payload to the same receiver, no store, with the
  dispatcher's per-host concurrency (``--max-per-host``);
- durable: ``--events`` DispatchEvents over ``--entities`` entities (sequences 1..N, arriving
  sequence-major as a live system would receive them) submitted to an ``EventOrchestrator``
  on the store at ``--db``; deliveries/s from the first submit to the last receipt, latency
  from each submit to its receipt (p50/p99/p99.9/max), order violations and duplicate POSTs
  (both must be 0).

For PostgreSQL the URL names the server; the benchmark creates a database of its own there
and drops it afterwards. Goals: >= 5,000 deliveries/s on SQLite and >= 40% of the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from eventledger.dispatch import DispatchConfig, DispatchEvent, EventOrchestrator
from eventledger.dispatch.cli import fast_loop_factory
from eventledger.store import open_store

GOAL_SQLITE_PER_S = 5000
GOAL_CEILING_RATIO = 0.40


# -- receiver (its own process) -----------------------------------------------------------------
def _receiver_main(conn: Connection) -> None:
    from aiohttp import web

    last_seq: dict[str, int] = {}
    seen: set[str] = set()
    receipts: dict[str, int] = {}
    stats = {"received": 0, "duplicates": 0, "order_violations": 0, "ceiling": 0}

    async def hook(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        now = time.time_ns()
        webhook_id = request.headers["webhook-id"]
        stats["received"] += 1
        if webhook_id in seen:
            stats["duplicates"] += 1
            return web.Response(status=200)
        seen.add(webhook_id)
        receipts[webhook_id] = now
        entity, seq = body["entity"], body["seq"]
        if seq != last_seq.get(entity, 0) + 1:
            stats["order_violations"] += 1
        last_seq[entity] = max(seq, last_seq.get(entity, 0))
        return web.Response(status=200)

    async def ceiling(request: web.Request) -> web.Response:
        await request.read()
        stats["ceiling"] += 1
        return web.Response(status=200)

    async def report(request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({**stats, "receipts": receipts}), content_type="application/json"
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/ceiling", ceiling)
        app.router.add_get("/stats", report)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        assert site._server is not None
        conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # any message: stop
        await runner.cleanup()

    asyncio.run(main())


# -- phases ---------------------------------------------------------------------------------------
async def measure_ceiling(url: str, n: int, concurrency: int, payload: bytes) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency * 2, limit_per_host=concurrency)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        counter = iter(range(n))

        async def one_client() -> None:
            for _ in counter:
                t0 = time.perf_counter()
                async with session.post(
                    url, data=payload, headers={"content-type": "application/json"}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": n, "concurrency": concurrency, "posts_per_s": round(n / elapsed),
            **percentiles(latencies)}  # fmt: skip


def percentiles(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {}
    ordered = sorted(values_s)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999),
            "max_ms": round(ordered[-1] * 1000, 2)}  # fmt: skip


async def measure_durable(args: argparse.Namespace, db: str, base_url: str) -> dict[str, Any]:
    store = open_store(db)
    config = DispatchConfig(
        workers=args.workers,
        max_per_host=args.max_per_host,
        allow_private_targets=True,
        claim_batch_size=args.claim_batch,
        poll_interval=0.05,
    )
    url = base_url + "/hook"
    per_entity = args.events // args.entities
    events = [
        DispatchEvent(f"ev-{e}-{s}", f"entity-{e}", s, {"entity": f"entity-{e}", "seq": s,
                      "data": "x" * 200}, url)
        for s in range(1, per_entity + 1)
        for e in range(args.entities)
    ]  # fmt: skip
    submitted_ns: dict[str, int] = {}
    try:
        async with EventOrchestrator(store, config) as orchestrator:
            started = time.perf_counter()
            start_ns = time.time_ns()
            for i in range(0, len(events), args.submit_batch):
                chunk = events[i : i + args.submit_batch]
                now = time.time_ns()
                for e in chunk:
                    submitted_ns[e.event_id] = now
                created = await orchestrator.submit_many(chunk)
                assert all(created)
            submit_s = time.perf_counter() - started
            idle = await orchestrator.wait_idle(args.max_seconds)
            metrics = orchestrator.metrics.as_dict()
        async with aiohttp.ClientSession() as session, session.get(base_url + "/stats") as r:
            stats = await r.json(loads=orjson.loads)
    finally:
        store.close()
    receipts: dict[str, int] = stats.pop("receipts")
    latencies = [(receipts[k] - v) / 1e9 for k, v in submitted_ns.items() if k in receipts]
    last = max(receipts.values()) if receipts else start_ns
    elapsed = (last - start_ns) / 1e9
    return {
        "events": len(events),
        "entities": args.entities,
        "workers": args.workers,
        "max_per_host": args.max_per_host,
        "finished": idle,
        "delivered": len(receipts),
        "deliveries_per_s": round(len(receipts) / elapsed) if elapsed > 0 else None,
        "submit_seconds": round(submit_s, 3),
        "elapsed_seconds": round(elapsed, 3),
        "latency_submit_to_receipt": percentiles(latencies),
        "order_violations": stats["order_violations"],
        "duplicate_posts": stats["duplicates"],
        "posts_received": stats["received"],
        "metrics": metrics,
    }


def measure_claim_scan(entities: int = 1000, per_entity: int = 20) -> dict[str, Any]:
    """Why SQLite parks blocked rows: claims of 100 with 70% of the entities' heads held
    IN_FLIGHT (their later rows blocked), with the plain readiness check vs with parking."""
    from eventledger.store import deliveries as q
    from eventledger.store.sqlite import connect

    claim = (
        f"UPDATE deliveries SET {q.CLAIM_SET} WHERE delivery_id IN ({q.DUE_IDS} LIMIT 100)"
        " RETURNING delivery_id"
    )
    params = {"owner": "bench", "lease_until": 1 << 61, "now": 1 << 50}
    out: dict[str, Any] = {}
    for park in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            open_store(f"sqlite:///{tmp}/scan.db").close()
            conn = connect(f"{tmp}/scan.db")
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO deliveries (delivery_id, webhook_id, entity_key, sequence,"
                " target_url, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, 1)",
                [(f"e{e}-{s}", f"e{e}-{s}", f"ent{e}", s, "http://h/", b"{}")
                 for s in range(1, per_entity + 1) for e in range(entities)],
            )  # fmt: skip
            conn.execute(
                "UPDATE deliveries SET state = 'IN_FLIGHT', lease_owner = 'x',"
                " lease_expires_at = ? WHERE sequence = 1 AND rowid % 10 >= 3",
                (1 << 61,),
            )
            conn.execute("COMMIT")
            times: list[float] = []
            claimed = 0
            while True:
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                if park:
                    conn.execute(q.PARK, {"parked": q.PARKED, "now": params["now"]})
                got = conn.execute(claim, params).fetchall()
                conn.execute("COMMIT")
                times.append(time.perf_counter() - t0)
                if not got:
                    break
                claimed += len(got)
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "UPDATE deliveries SET state = 'COMPLETED' WHERE delivery_id = ?",
                    [(r[0],) for r in got],
                )
                if park:
                    conn.executemany(
                        q.UNPARK_NEXT, [{"parked": q.PARKED, "delivery_id": r[0]} for r in got]
                    )
                conn.execute("COMMIT")
            conn.close()
        out["parking" if park else "readiness_check_only"] = {
            "claimed": claimed,
            "claims": len(times),
            **percentiles(times),
            "total_s": round(sum(times), 3),
        }
    return out


def pg_database(server_url: str) -> tuple[str, str]:
    """A fresh database on the server: (its URL, its name)."""
    import psycopg

    name = f"el_dispatch_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, "")), name


def pg_drop(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", help="sqlite:///PATH or postgresql://server (default: temp file)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--entities", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--max-per-host", type=int, default=50)
    parser.add_argument("--claim-batch", type=int, default=200)
    parser.add_argument("--submit-batch", type=int, default=1_000)
    parser.add_argument("--ceiling-requests", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop" if fast_loop_factory() else "asyncio",
        help="event loop of the client side (both phases use the same)",
    )
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver_main, args=(child,), daemon=True)
    receiver.start()
    port = parent.recv()
    base_url = f"http://127.0.0.1:{port}"
    cleanup: list[Any] = []
    try:
        if args.db and args.db.startswith("postgres"):
            db, name = pg_database(args.db)
            cleanup.append(lambda: pg_drop(args.db, name))
            backend = "postgres"
        else:
            tmp = tempfile.TemporaryDirectory()
            cleanup.append(tmp.cleanup)
            db = args.db or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
            backend = "sqlite"
        payload = orjson.dumps({"entity": "entity-0", "seq": 1, "data": "x" * 200})
        factory = fast_loop_factory() if args.loop == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            ceiling = runner.run(
                measure_ceiling(base_url + "/ceiling", args.ceiling_requests, args.max_per_host,
                                payload)
            )  # fmt: skip
        with asyncio.Runner(loop_factory=factory) as runner:
            durable = runner.run(measure_durable(args, db, base_url))
    finally:
        parent.send("stop")
        receiver.join(10)
        for fn in reversed(cleanup):
            fn()
    rate = durable["deliveries_per_s"] or 0
    claim_scan = measure_claim_scan() if backend == "sqlite" else None
    result = {
        "benchmark": "dispatch",
        "backend": backend,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "loop": args.loop,
        "ceiling_plain_aiohttp": ceiling,
        "durable": durable,
        "ratio_to_ceiling": round(rate / ceiling["posts_per_s"], 3),
        "sqlite_claim_scan": claim_scan,
        "goals": {
            "deliveries_per_s_sqlite": GOAL_SQLITE_PER_S,
            "ratio_to_ceiling": GOAL_CEILING_RATIO,
            "met": (
                durable["order_violations"] == 0
                and durable["duplicate_posts"] == 0
                and rate / ceiling["posts_per_s"] >= GOAL_CEILING_RATIO
                and (backend != "sqlite" or rate >= GOAL_SQLITE_PER_S)
            ),
        },
    }
    print(json.dumps(result, indent=2))
    return 0 if durable["order_violations"] == 0 and durable["duplicate_posts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
