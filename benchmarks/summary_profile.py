"""Profile: legacy vs new summary, time and memory delta per call, side by side, one run.

    python benchmarks/summary_profile.py                  # the top user of shape B (~100k events)
    python benchmarks/summary_profile.py --shape A        # the 1,000,000-event user
    python benchmarks/summary_profile.py --rows 50000 --calls 3      # quick

Uses :mod:`summary_bench`'s legacy-layout tables (loaded with COPY if missing). Each
approach runs in a fresh process (so that one's memory cannot hide in the other's) and makes
one cold call (reported apart), then ``--calls`` calls twice:

1. plain: wall time per call and the RSS growth of the process across each call (psutil);
2. traced: the same calls under ``tracemalloc``, giving the Python heap allocated at the peak
   of each call (what the call holds at once) and what it still holds after.

The legacy approach is :func:`eventledger.legacy.legacy_fetch_user_activity_summary` (the
seed's code: fetch all rows, set-dedupe, loop in Python); the new one is
:class:`eventledger.summary.ExistingTable` (one read-only filtered aggregate in SQL).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import summary_bench as sb  # noqa: E402


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """In the fresh worker process: both passes for one approach."""
    if args.worker == "legacy":
        import psycopg

        from eventledger.legacy import legacy_fetch_user_activity_summary

        conn = psycopg.connect(args.url)

        def call() -> Any:
            return legacy_fetch_user_activity_summary(conn, args.user, args.table)

        close = conn.close
    else:
        from eventledger.summary import ExistingTable

        et = ExistingTable(args.url, table=args.table)

        def call() -> Any:
            return et.fetch_user_activity_summary(args.user)

        close = et.close
    try:
        # One cold call first (connection set-up, first plan; the new path also builds its
        # Unicode translation table once): reported, not counted in the per-call figures.
        rss_cold = sb.rss_mb()
        t0 = time.perf_counter()
        call()
        cold_ms = (time.perf_counter() - t0) * 1000.0
        rss_start = sb.rss_mb()
        cold_rss_delta = rss_start - rss_cold
        times, rss_deltas = [], []
        result = None
        for _ in range(args.calls):
            before = sb.rss_mb()
            t0 = time.perf_counter()
            result = call()
            times.append((time.perf_counter() - t0) * 1000.0)
            rss_deltas.append(sb.rss_mb() - before)
        peak_rss = max(sb.peak_rss_mb(), sb.rss_mb())
        growth = sb.rss_mb() - rss_start
        tracemalloc.start()
        traced_peaks, traced_after, traced_times = [], [], []
        for _ in range(args.calls):
            tracemalloc.reset_peak()
            start, _ = tracemalloc.get_traced_memory()
            t0 = time.perf_counter()
            call()
            traced_times.append((time.perf_counter() - t0) * 1000.0)
            now, peak = tracemalloc.get_traced_memory()
            traced_peaks.append((peak - start) / 2**20)
            traced_after.append((now - start) / 2**20)
        tracemalloc.stop()
    finally:
        close()
    return {
        "calls": args.calls,
        "cold_first_call_ms": round(cold_ms, 2),
        "time_per_call_ms": {
            "median": round(statistics.median(times), 2),
            "min": round(min(times), 2),
            "max": round(max(times), 2),
        },
        "rss_delta_cold_call_mb": round(cold_rss_delta, 1),
        "rss_delta_per_call_mb": {
            "median": round(statistics.median(rss_deltas), 1),
            "max": round(max(rss_deltas), 1),
        },
        "rss_growth_over_the_calls_mb": round(growth, 1),
        "process_peak_rss_mb": round(peak_rss, 1),
        "python_heap_peak_per_call_mb": round(max(traced_peaks), 2),
        "python_heap_kept_after_call_mb": round(max(traced_after), 3),
        "time_per_call_under_tracemalloc_ms": round(statistics.median(traced_times), 2),
        "result": result,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg", default=os.environ.get("EVENTLEDGER_TEST_PG", sb.PG_DEFAULT))
    p.add_argument("--db-name", default="el_bench_summary")
    p.add_argument("--shape", choices=["A", "B"], default="B")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--worker", choices=["legacy", "new"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--user", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(profile(args)))
        return 0

    url = sb.ensure_database(args.pg, args.db_name)
    kind, table = {"A": ("single", "bench_shape_a"), "B": ("zipf", "bench_shape_b")}[args.shape]
    info = sb.ensure_legacy_table(url, table, kind, args.rows, args.users)
    out: dict[str, Any] = {"benchmark": "summary_profile", "machine_before": sb.machine()}
    out["data"] = info
    for approach in ("legacy", "new"):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            approach,
            "--url",
            url,
            "--table",
            table,
            "--user",
            str(info["heavy_user"]),
            "--calls",
            str(args.calls),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
        out[approach] = json.loads(proc.stdout)
    legacy, new = out["legacy"], out["new"]
    out["side_by_side"] = {
        "events_of_the_user": info["heavy_user_rows"],
        "time_per_call_ms (legacy / new)": [
            legacy["time_per_call_ms"]["median"],
            new["time_per_call_ms"]["median"],
        ],
        "rss_delta_cold_call_mb (legacy / new)": [
            legacy["rss_delta_cold_call_mb"],
            new["rss_delta_cold_call_mb"],
        ],
        "rss_delta_per_call_max_mb (legacy / new)": [
            legacy["rss_delta_per_call_mb"]["max"],
            new["rss_delta_per_call_mb"]["max"],
        ],
        "python_heap_peak_per_call_mb (legacy / new)": [
            legacy["python_heap_peak_per_call_mb"],
            new["python_heap_peak_per_call_mb"],
        ],
        "process_peak_rss_mb (legacy / new)": [
            legacy["process_peak_rss_mb"],
            new["process_peak_rss_mb"],
        ],
        "speedup": round(
            legacy["time_per_call_ms"]["median"] / new["time_per_call_ms"]["median"], 1
        ),
        "same_answer": sb.compare(legacy, new)["same_answer"],
    }
    out["machine_after"] = sb.machine()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
