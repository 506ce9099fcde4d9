"""Load test: the memory of a process serving summaries stays flat as the user's events grow.

    python benchmarks/summary_memory.py                     # 10k, 100k, 1M events
    python benchmarks/summary_memory.py --sizes 2000,20000 --calls 5     # quick

For each size N there is a legacy-layout table in which one user owns N events (loaded with
COPY by :mod:`summary_bench`'s loader into its database; the 1,000,000 table is the
benchmark's shape A and is reused). One fresh process then serves summaries with
:class:`eventledger.summary.ExistingTable` for N = 10k, then 100k, then 1M (``--calls`` each),
recording its RSS after each step; the goal is that RSS stays within 5 MB from the first
size to the last. Beside it, the baseline: the legacy code in a fresh process per size
(its peak RSS grows with N). JSON is printed; a PNG plot of RSS and latency against the
event count is written to ``benchmarks/out/summary_memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import summary_bench as sb  # noqa: E402

FLAT_GOAL_MB = 5.0
SHAPE_A_USERS = 10_000  # summary_bench's default, so that its shape-A table is reused


def table_for(url: str, size: int) -> dict[str, Any]:
    if size == 1_000_000:
        return sb.ensure_legacy_table(url, "bench_shape_a", "single", size, SHAPE_A_USERS)
    return sb.ensure_legacy_table(url, f"bench_mem_{size}", "single", size, SHAPE_A_USERS)


def serve(args: argparse.Namespace) -> dict[str, Any]:
    """The serving process: one size after another, RSS after each."""
    from eventledger.summary import ExistingTable

    steps = []
    baseline = sb.rss_mb()
    for item in args.tables.split(","):
        table, size = item.split(":")
        with ExistingTable(args.url, table=table) as et:
            et.fetch_user_activity_summary(1)  # warm-up: connection, first plan
            latencies = []
            deadline = time.monotonic() + args.max_seconds
            for _ in range(args.calls):
                t0 = time.perf_counter()
                result = et.fetch_user_activity_summary(1)
                latencies.append(time.perf_counter() - t0)
                if time.monotonic() > deadline:
                    break
        step = {"events": int(size), **sb.timing(latencies)}
        step.update(
            {
                "rss_mb": round(sb.rss_mb(), 1),
                "peak_rss_mb": round(max(sb.peak_rss_mb(), sb.rss_mb()), 1),
                "result": result,
            }
        )
        steps.append(step)
    return {"rss_at_start_mb": round(baseline, 1), "steps": steps}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["new_serving_process"]["steps"]
    xs = [s["events"] for s in steps]
    legacy = result["legacy_baseline"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(xs, [s["rss_mb"] for s in steps], "o-", label="new: RSS after the step")
    ax1.plot(xs, [s["peak_rss_mb"] for s in steps], "s--", label="new: peak RSS so far")
    lx = [p["events"] for p in legacy if "peak_rss_mb" in p]
    ax1.plot(
        lx, [p["peak_rss_mb"] for p in legacy if "peak_rss_mb" in p], "x-", label="legacy: peak RSS"
    )
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("events of the user")
    ax1.set_ylabel("MB")
    ax1.set_title("client process memory")
    ax1.legend()
    ax2.plot(xs, [s["p50_ms"] for s in steps], "o-", label="new p50")
    ax2.plot(xs, [s["p99_ms"] for s in steps], "s--", label="new p99")
    ax2.plot(lx, [p["p50_ms"] for p in legacy if "p50_ms" in p], "x-", label="legacy p50")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("events of the user")
    ax2.set_ylabel("ms per summary")
    ax2.set_title("latency")
    ax2.legend()
    from matplotlib.ticker import NullFormatter

    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg", default=os.environ.get("EVENTLEDGER_TEST_PG", sb.PG_DEFAULT))
    p.add_argument("--db-name", default="el_bench_summary")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--calls", type=int, default=20, help="summaries per size (new)")
    p.add_argument("--legacy-calls", type=int, default=2, help="summaries per size (legacy)")
    p.add_argument("--skip-legacy", action="store_true")
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--plot", default=str(Path(__file__).parent / "out" / "summary_memory.png"))
    p.add_argument("--worker", choices=["serve"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--tables", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(serve(args)))
        return 0

    started = time.perf_counter()
    url = sb.ensure_database(args.pg, args.db_name)
    sizes = [int(s) for s in args.sizes.split(",")]
    tables = {n: table_for(url, n) for n in sizes}
    out: dict[str, Any] = {
        "benchmark": "summary_memory",
        "machine_before": sb.machine(),
        "tables": list(tables.values()),
    }
    spec = ",".join(f"{tables[n]['table']}:{n}" for n in sizes)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "serve",
        "--url",
        url,
        "--tables",
        spec,
        "--calls",
        str(args.calls),
        "--max-seconds",
        str(args.max_seconds),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
    served = json.loads(proc.stdout)
    out["new_serving_process"] = served
    legacy = []
    for n in sizes:
        if args.skip_legacy:
            break
        r = sb.run_worker(
            "legacy",
            url=url,
            table=tables[n]["table"],
            user=1,
            calls=args.legacy_calls,
            warmup=0,
            max_seconds=args.max_seconds,
        )
        legacy.append({"events": n, **{k: v for k, v in r.items() if k != "result"}})
    out["legacy_baseline"] = legacy
    steps = served["steps"]
    growth = steps[-1]["rss_mb"] - steps[0]["rss_mb"]
    peak_growth = steps[-1]["peak_rss_mb"] - steps[0]["peak_rss_mb"]
    out["flat"] = {
        "rss_growth_mb": round(growth, 1),
        "peak_rss_growth_mb": round(peak_growth, 1),
        "from_events": steps[0]["events"],
        "to_events": steps[-1]["events"],
        "goal_within_5mb": abs(growth) <= FLAT_GOAL_MB and abs(peak_growth) <= FLAT_GOAL_MB,
    }
    try:
        plot(out, Path(args.plot))
        out["plot"] = args.plot
    except ImportError as exc:
        out["plot"] = f"not written: {exc} (pip install -e '.[bench]')"
    out["machine_after"] = sb.machine()
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
