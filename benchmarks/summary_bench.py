"""Benchmark: per-user activity summaries (SPEC §3), legacy and new side by side, JSON out.

    python benchmarks/summary_bench.py                    # 1,000,000 rows per shape
    python benchmarks/summary_bench.py --rows 100000 --own-events 100000 --calls 20   # quick

Existing-table mode. The legacy layout is loaded with COPY into a database of its own
(``--db-name``, default ``el_bench_summary``, created on the server named by ``--pg``; the
tables are reused while their recorded parameters match, ``--reload`` rebuilds them):

* shape A: ``--rows`` rows, one user owns all of them;
* shape B: ``--rows`` rows over ``--users`` (10,000) users, Zipf-skewed (the top user owns
  ~10%: ~100k rows of 1M), rows of all users interleaved.

Metadata is nested (objects, arrays); purchases carry prices as numbers, numeric strings,
null, "", "N/A" or nothing. For the heaviest user of each shape (and a small user of B), each
approach runs in a fresh subprocess so that its peak RSS is its own:

* legacy: :func:`eventledger.legacy.legacy_fetch_user_activity_summary` (fetch every row,
  set-dedupe, loop in Python) -- the baseline; fewer calls where one takes seconds;
* new: :class:`eventledger.summary.ExistingTable` (one read-only filtered aggregate).

Reported per approach: calls, p50/p99/max latency (ms), peak RSS (ru_maxrss) and the RSS
growth of the process during the calls (psutil), and that both answers agree.

Own store: a store on each backend holding one user with ``--own-events`` events and 10,000
small users, written directly with SQL (events, users, user_counts kept consistent); the
summary of the heavy and of a small user from the maintained aggregate, against a baseline
that recounts the user's events in SQL (what ``verify USER`` does).

Goals: existing-table p99 <= 150 ms for the 1M-event user and peak RSS <= 64 MB; own store
p99 <= 2 ms at any event count, both backends. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
GOAL_EXISTING_P99_MS = 150.0
GOAL_EXISTING_PEAK_RSS_MB = 64.0
GOAL_OWN_P99_MS = 2.0
DATA_VERSION = 1
LEGACY_DDL = (
    "CREATE TABLE {} (id BIGINT NOT NULL, user_id BIGINT NOT NULL, type VARCHAR(32) NOT NULL,"
    " metadata JSONB DEFAULT '{{}}'::jsonb, PRIMARY KEY (id, user_id))"
)


def with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def ensure_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not found:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_db(admin_url, name)


# -- data -------------------------------------------------------------------------------------
PRICE_KINDS = [
    ("number", 70),
    ("string", 15),
    ("int", 5),
    ("null", 3),
    ("na", 3),
    ("empty", 2),
    ("missing", 2),
]


def metadata_json(rng: random.Random, kind: str) -> str:
    """Nested metadata as JSON text without backslashes, tabs or newlines (COPY-safe)."""
    page = f"/p/{rng.randrange(5000)}"
    if kind == "click":
        return (
            f'{{"page": "{page}", "ref": {{"src": "ads", "campaign": [{rng.randrange(99)}, 7]}},'
            f' "pos": {{"x": {rng.randrange(1920)}, "y": {rng.randrange(1080)}}}}}'
        )
    if kind == "view":
        return f'{{"page": "{page}", "duration_ms": {rng.randrange(60000)}, "tags": ["a", "b"]}}'
    if kind == "purchase":
        r = rng.randrange(100)
        acc = 0
        price_kind = "number"
        for name, weight in PRICE_KINDS:
            acc += weight
            if r < acc:
                price_kind = name
                break
        cents = rng.randrange(100, 100000)
        price = {
            "number": f"{cents / 100:.2f}",
            "string": f'"{cents / 100:.2f}"',
            "int": str(cents // 100),
            "null": "null",
            "na": '"N/A"',
            "empty": '""',
            "missing": "",
        }[price_kind]
        head = f'"price": {price}, ' if price else ""
        return (
            f'{{{head}"currency": "EUR", "items": [{{"sku": "s{rng.randrange(999)}", "qty": 2,'
            f' "price": 9.99}}], "meta": {{"coupon": null, "nested": {{"price": "ignored"}}}}}}'
        )
    return f'{{"page": "{page}"}}'


def event_types(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.50:
        return "click"
    if r < 0.85:
        return "view"
    if r < 0.97:
        return "purchase"
    return "signup"


def zipf_counts(rows: int, users: int) -> list[int]:
    """Rows per user with weights 1/k, summing to ``rows`` (the top user first)."""
    h = sum(1.0 / k for k in range(1, users + 1))
    counts = [max(1, int(rows / (k * h))) for k in range(1, users + 1)]
    counts[0] += rows - sum(counts)
    return counts


def copy_legacy_rows(url: str, table: str, user_of_row: Iterator[int], rows: int) -> None:
    rng = random.Random(20261123)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(LEGACY_DDL.format(sql.Identifier(table).as_string(conn)))
        with conn.cursor() as cur:
            copy_sql = sql.SQL("COPY {} (id, user_id, type, metadata) FROM STDIN").format(
                sql.Identifier(table)
            )
            with cur.copy(copy_sql) as copy:
                buf: list[str] = []
                for i in range(1, rows + 1):
                    kind = event_types(rng)
                    buf.append(f"{i}\t{next(user_of_row)}\t{kind}\t{metadata_json(rng, kind)}\n")
                    if len(buf) >= 20000:
                        copy.write("".join(buf))
                        buf = []
                if buf:
                    copy.write("".join(buf))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


def _meta_matches(url: str, table: str, params: dict[str, Any]) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_meta (table_name TEXT PRIMARY KEY, params JSONB)"
        )
        row = conn.execute(
            "SELECT params FROM bench_meta WHERE table_name = %s", (table,)
        ).fetchone()
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0] == params and exists and exists[0])


def _record_meta(url: str, table: str, params: dict[str, Any]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO bench_meta VALUES (%s, %s) ON CONFLICT (table_name)"
            " DO UPDATE SET params = excluded.params",
            (table, json.dumps(params)),
        )


def ensure_legacy_table(
    url: str, table: str, shape: str, rows: int, users: int, reload: bool = False
) -> dict[str, Any]:
    """Create and load a legacy table unless it is already there with these parameters.

    Returns the table's description: rows, users, its heaviest and a small user."""
    params = {"shape": shape, "rows": rows, "users": users, "version": DATA_VERSION}
    if shape == "single":
        counts = [rows]
    else:
        counts = zipf_counts(rows, users)
    loaded = False
    if reload or not _meta_matches(url, table, params):
        started = time.perf_counter()
        owners = [u for u, n in enumerate(counts, start=1) for _ in range(n)]
        random.Random(5).shuffle(owners)
        copy_legacy_rows(url, table, iter(owners), rows)
        del owners
        _record_meta(url, table, params)
        loaded = True
        load_s = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        size = conn.execute(
            "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)", (table, table)
        ).fetchone()
    assert size is not None
    small_user = min(range(len(counts)), key=lambda i: abs(counts[i] - 20)) + 1
    out = {
        "table": table,
        "shape": shape,
        "rows": rows,
        "users": len(counts),
        "heavy_user": 1,
        "heavy_user_rows": counts[0],
        "small_user": small_user,
        "small_user_rows": counts[small_user - 1],
        "heap_mb": round(size[0] / 2**20, 1),
        "index_mb": round(size[1] / 2**20, 1),
        "loaded_now": loaded,
    }
    if loaded:
        out["load_seconds"] = round(load_s, 1)
    return out


# -- measuring (in a fresh subprocess) --------------------------------------------------------
def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def timing(latencies_s: list[float]) -> dict[str, Any]:
    ms = [x * 1000.0 for x in latencies_s]
    return {
        "calls": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


def measure(call: Callable[[], Any], calls: int, warmup: int, max_seconds: float) -> dict[str, Any]:
    """Run ``call`` (warm-up first), bounded in count and time; latency and memory."""
    result = None
    for _ in range(warmup):
        result = call()
    rss_before = rss_mb()
    latencies: list[float] = []
    deadline = time.monotonic() + max_seconds
    for _ in range(calls):
        t0 = time.perf_counter()
        result = call()
        latencies.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    out = timing(latencies)
    out.update(
        {
            "warmup_calls": warmup,
            "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(rss_mb(), 1),
            "rss_delta_mb": round(rss_mb() - rss_before, 1),
            "peak_rss_mb": round(max(peak_rss_mb(), rss_mb()), 1),
            "result": result,
        }
    )
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One approach in this (fresh) process; prints JSON."""
    if args.worker == "legacy":
        from eventledger.legacy import legacy_fetch_user_activity_summary

        conn = psycopg.connect(args.url)
        try:
            return measure(
                lambda: legacy_fetch_user_activity_summary(conn, args.user, args.table),
                args.calls,
                args.warmup,
                args.max_seconds,
            )
        finally:
            conn.close()
    if args.worker == "new":
        from eventledger.summary import ExistingTable

        with ExistingTable(args.url, table=args.table) as et:
            return measure(
                lambda: et.fetch_user_activity_summary(args.user),
                args.calls,
                args.warmup,
                args.max_seconds,
            )
    from eventledger import Ledger

    with Ledger(args.url) as ledger:
        if args.worker == "own":
            return measure(
                lambda: ledger.fetch_user_activity_summary(args.user_text),
                args.calls,
                args.warmup,
                args.max_seconds,
            )
        # own-recount: the baseline, recomputing the user's summary from its events in SQL
        return measure(
            lambda: {t: n for _, t, n, _, _ in ledger.store.recount_from_events(args.user_text)},
            args.calls,
            args.warmup,
            args.max_seconds,
        )


def run_worker(kind: str, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return dict(json.loads(proc.stdout))


def compare(legacy: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    a, b = legacy.get("result"), new.get("result")
    same = False
    if isinstance(a, dict) and isinstance(b, dict):
        same = all(a[k] == b[k] for k in ("click", "view", "purchase")) and math.isclose(
            a["total_value"], b["total_value"], rel_tol=1e-9, abs_tol=1e-9
        )
    out: dict[str, Any] = {"same_answer": same}
    if "p50_ms" in legacy and "p50_ms" in new:
        out["speedup_p50"] = round(legacy["p50_ms"] / new["p50_ms"], 1)
        out["peak_rss_ratio"] = round(legacy["peak_rss_mb"] / new["peak_rss_mb"], 1)
    return out


# -- own store --------------------------------------------------------------------------------
def load_own_store(url: str, heavy_events: int, small_users: int) -> dict[str, Any]:
    """Write a heavy user and many small users straight into the store's tables."""
    from eventledger.store import open_store

    started = time.perf_counter()
    store = open_store(url)
    store.close()
    rng = random.Random(3)
    base_us = 1_767_225_600_000_000
    counts: Counter[tuple[str, str]] = Counter()
    totals: Counter[str] = Counter()
    first: dict[str, int] = {}

    def rows() -> Iterator[tuple[Any, ...]]:
        seq: Counter[str] = Counter()
        plan = [("heavy", heavy_events)] + [(f"small-{i}", 5) for i in range(small_users)]
        for user, n in plan:
            for _ in range(n):
                kind = rng.choice(("click", "view", "view", "purchase"))
                price = round(rng.uniform(1, 500), 2) if kind == "purchase" else None
                seq[user] += 1
                ts = base_us + seq[user] * 1000
                counts[(user, kind)] += 1
                totals[user] += price or 0.0
                first.setdefault(user, ts)
                meta = f'{{"price": {price}}}' if price is not None else '{"page": "/x"}'
                yield (
                    f"{user}-{seq[user]}",
                    user,
                    kind,
                    ts,
                    meta,
                    price,
                    None,
                    seq[user],
                    "0" * 32,
                    "bench",
                    seq[user],
                    ts,
                )

    cols = (
        "event_id, user_id, type, ts_us, metadata, price, sequence, user_seq, content_hash,"
        " batch_id, batch_index, applied_at_us"
    )
    if url.startswith("sqlite"):
        import sqlite3

        from eventledger.store.sqlite import sqlite_path

        conn = sqlite3.connect(sqlite_path(url))
        with conn:
            conn.executemany(f"INSERT INTO events ({cols}) VALUES ({','.join('?' * 12)})", rows())
            conn.executemany(
                "INSERT INTO users (user_id, last_seen_at, first_seen_at, applied_count,"
                " total_value) VALUES (?, ?, ?, ?, ?)",
                [
                    (u, first[u], first[u], sum(n for (uu, _), n in counts.items() if uu == u), t)
                    for u, t in totals.items()
                ],
            )
            conn.executemany(
                "INSERT INTO user_counts (user_id, type, n) VALUES (?, ?, ?)",
                [(u, t, n) for (u, t), n in counts.items()],
            )
        conn.close()
    else:
        applied: Counter[str] = Counter()
        with psycopg.connect(url, autocommit=True) as pconn, pconn.cursor() as cur:
            with cur.copy(f"COPY events ({cols}) FROM STDIN") as copy:
                for r in rows():
                    copy.write_row(r)
            for (u, _), n in counts.items():
                applied[u] += n
            with cur.copy(
                "COPY users (user_id, last_seen_at, first_seen_at, applied_count, total_value)"
                " FROM STDIN"
            ) as copy:
                for u, t in totals.items():
                    copy.write_row((u, first[u], first[u], applied[u], t))
            with cur.copy("COPY user_counts (user_id, type, n) FROM STDIN") as copy:
                for (u, t), n in counts.items():
                    copy.write_row((u, t, n))
            pconn.execute("VACUUM ANALYZE")
    return {
        "heavy_events": heavy_events,
        "small_users": small_users,
        "load_seconds": round(time.perf_counter() - started, 1),
    }


def own_store_bench(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="el_bench_summary_"))
    targets = {"sqlite": f"sqlite:///{tmp / 'own.db'}"}
    name = args.db_name + "_own"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    targets["postgres"] = ensure_database(args.pg, name)
    for backend, url in targets.items():
        try:
            setup = load_own_store(url, args.own_events, args.own_small_users)
        except Exception as exc:  # e.g. a backend that is not available
            out[backend] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        entry: dict[str, Any] = {"setup": setup}
        for label, user in (("heavy_user", "heavy"), ("small_user", "small-7")):
            entry[label] = {
                "new": run_worker(
                    "own",
                    url=url,
                    user_text=user,
                    calls=args.own_calls,
                    warmup=20,
                    max_seconds=args.max_seconds,
                ),
                "baseline_recount": run_worker(
                    "own-recount",
                    url=url,
                    user_text=user,
                    calls=max(5, args.calls // 5),
                    warmup=1,
                    max_seconds=args.max_seconds,
                ),
            }
        p99 = max(entry[x]["new"].get("p99_ms", math.inf) for x in ("heavy_user", "small_user"))
        entry["goal_p99_le_2ms"] = p99 <= GOAL_OWN_P99_MS
        out[backend] = entry
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return out


# -- main -------------------------------------------------------------------------------------
def existing_table_bench(args: argparse.Namespace, url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    shapes = {"A": ("single", "bench_shape_a"), "B": ("zipf", "bench_shape_b")}
    for shape in args.shapes.split(","):
        kind, table = shapes[shape]
        info = ensure_legacy_table(url, table, kind, args.rows, args.users, args.reload)
        entry: dict[str, Any] = {"data": info}
        users = [("heavy_user", info["heavy_user"], info["heavy_user_rows"])]
        if kind == "zipf":
            users.append(("small_user", info["small_user"], info["small_user_rows"]))
        for label, user, nrows in users:
            common = {"url": url, "table": table, "user": user, "max_seconds": args.max_seconds}
            new = run_worker("new", calls=args.calls, warmup=2, **common)
            # The legacy code takes seconds per call on big users: fewer calls there.
            if nrows <= 20_000:
                legacy_calls = args.calls
            elif nrows <= 200_000:
                legacy_calls = min(args.calls, 20)
            else:
                legacy_calls = args.legacy_calls
            legacy = (
                {"skipped": True}
                if args.skip_legacy
                else run_worker("legacy", calls=legacy_calls, warmup=0, **common)
            )
            entry[label] = {"user": user, "events": nrows, "legacy": legacy, "new": new}
            entry[label]["comparison"] = compare(legacy, new)
        out[shape] = entry
    if "A" in out:
        new_a = out["A"]["heavy_user"]["new"]
        out["goals_1m_user"] = {
            "p99_le_150ms": new_a.get("p99_ms", math.inf) <= GOAL_EXISTING_P99_MS,
            "peak_rss_le_64mb": new_a.get("peak_rss_mb", math.inf) <= GOAL_EXISTING_PEAK_RSS_MB,
            "rows_of_the_user": out["A"]["heavy_user"]["events"],
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg", default=os.environ.get("EVENTLEDGER_TEST_PG", PG_DEFAULT))
    p.add_argument("--db-name", default="el_bench_summary")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--shapes", default="A,B")
    p.add_argument("--calls", type=int, default=50, help="calls per measurement (new)")
    p.add_argument("--legacy-calls", type=int, default=5, help="legacy calls for users > 200k")
    p.add_argument("--own-events", type=int, default=1_000_000)
    p.add_argument("--own-small-users", type=int, default=10_000)
    p.add_argument("--own-calls", type=int, default=2000)
    p.add_argument("--max-seconds", type=float, default=300.0, help="time bound per measurement")
    p.add_argument("--reload", action="store_true", help="reload the legacy tables")
    p.add_argument("--skip-legacy", action="store_true")
    p.add_argument("--skip-own", action="store_true")
    p.add_argument("--skip-existing", action="store_true")
    p.add_argument("--output", help="also write the JSON here")
    # worker mode (internal)
    p.add_argument(
        "--worker", choices=["legacy", "new", "own", "own-recount"], help=argparse.SUPPRESS
    )
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--table", default="events", help=argparse.SUPPRESS)
    p.add_argument("--user", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--user-text", default="", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "summary",
        "machine_before": machine(),
        "params": {
            k: getattr(args, k)
            for k in ("rows", "users", "calls", "legacy_calls", "own_events", "own_calls")
        },
    }
    url = ensure_database(args.pg, args.db_name)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT version(), current_setting('max_parallel_workers_per_gather')"
        ).fetchone()
    assert row is not None
    report["postgres"] = {
        "version": row[0].split(" on ")[0],
        "max_parallel_workers_per_gather": row[1],
    }
    if not args.skip_existing:
        report["existing_table"] = existing_table_bench(args, url)
    if not args.skip_own:
        report["own_store"] = own_store_bench(args)
    report["machine_after"] = machine()
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
