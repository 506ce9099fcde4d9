"""Benchmark: `Ledger.process` end to end against the floor of reading + json.loads.

One command, JSON out:

    python benchmarks/process_bench.py                         # 1,000,000 events, SQLite
    python benchmarks/process_bench.py --db postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/process_bench.py --db postgresql://... --processes 2

The generated NDJSON has 10% duplicates, 5% malformed lines, 2% rejected-then-corrected
retries, 100k users and shuffled (out-of-order) timestamps. Figures:

- floor: read the file line by line and stdlib-``json.loads`` each line, nothing else;
- processor: the pure in-memory processor (no store) on the same file;
- first run: ``Ledger.process`` into an empty store, outcomes streamed to a file (a fresh
  subprocess per run, so its peak RSS is its own);
- second run: the same file again (everything is a duplicate or rejected);
- with ``--processes N``: N processes each ingest their own part at the same time.

For PostgreSQL the URL names the server; the benchmark creates a database of its own there.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

RECEIVED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def generate(path: Path, n: int, users: int, seed: int = 7) -> dict[str, int]:
    """Write ``n`` NDJSON lines; return what was generated, by kind."""
    rng = random.Random(seed)
    kinds = {"valid": 0, "duplicate": 0, "malformed": 0, "bad_then_corrected": 0}
    base_ms = int((RECEIVED_AT - timedelta(days=30)).timestamp() * 1000)
    span_ms = 30 * 86_400_000
    recent: list[bytes] = []
    with path.open("wb") as out:
        i = 0
        written = 0
        while written < n:
            r = rng.random()
            if r < 0.10 and recent:
                out.write(rng.choice(recent))
                kinds["duplicate"] += 1
                written += 1
                continue
            if r < 0.15:
                out.write(b'{"event_id": "m%d", "user_id": "u1", "type": \n' % i)
                kinds["malformed"] += 1
                written += 1
                i += 1
                continue
            user = f"user-{int(rng.paretovariate(1.2)) % users}"
            ts = base_ms + rng.randrange(span_ms)
            event_type = rng.choice(("click", "view", "view", "purchase"))
            event = {
                "event_id": f"e{i}",
                "user_id": user,
                "type": event_type,
                "timestamp": ts,
                "metadata": {"page": f"/p/{rng.randrange(500)}", "ref": "bench"},
            }
            if event_type == "purchase":
                event["metadata"]["price"] = round(rng.uniform(1, 500), 2)
            if r < 0.17 and written + 2 <= n:
                bad = dict(event, type="Bad Type")
                out.write(json.dumps(bad).encode() + b"\n")
                kinds["bad_then_corrected"] += 1
                written += 1
            line = json.dumps(event).encode() + b"\n"
            out.write(line)
            kinds["valid"] += 1
            written += 1
            if len(recent) < 5000:
                recent.append(line)
            else:
                recent[rng.randrange(5000)] = line
            i += 1
    return kinds


def floor_seconds(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            try:
                json.loads(line)
            except ValueError:
                pass  # the malformed lines: the floor still pays for trying
    return time.perf_counter() - start


def processor_seconds(path: Path) -> float:
    from eventledger.inputs import iter_events
    from eventledger.processor import Processor, parse_item
    from eventledger.timeutil import datetime_to_us

    processor = Processor(received_at_us=datetime_to_us(RECEIVED_AT))
    start = time.perf_counter()
    with path.open("rb") as f:
        chunk: list[object] = []
        index = 0
        for item in iter_events(f):
            chunk.append(parse_item(item))
            if len(chunk) == 2000:
                processor.decide_chunk(chunk, {}, index)
                index += len(chunk)
                chunk = []
        if chunk:
            processor.decide_chunk(chunk, {}, index)
    return time.perf_counter() - start


def ingest(path: str, db_url: str, outcomes: str) -> dict[str, object]:
    """Process a file with the library, outcomes streamed to a file (run in a subprocess)."""
    import orjson

    from eventledger import Ledger
    from eventledger.inputs import iter_events

    with Ledger(db_url) as ledger, open(path, "rb") as f, open(outcomes, "wb") as out:
        start = time.perf_counter()
        report = ledger.process(
            iter_events(f),
            received_at=RECEIVED_AT,
            keep_outcomes=False,
            outcome_sink=lambda o: out.write(orjson.dumps(o.to_dict()) + b"\n"),
        )
        elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": round(elapsed, 3),
        "events_per_s": round(report.total / elapsed),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "report": report.summary_dict(),
    }


def run_ingest_subprocess(path: Path, db_url: str, outcomes: Path) -> dict[str, object]:
    here = str(Path(__file__).parent)
    code = (
        f"import json,sys; sys.path.insert(0, {here!r}); import process_bench as b; "
        f"print(json.dumps(b.ingest({str(path)!r}, {db_url!r}, {str(outcomes)!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"ingest failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ingest_part(args: tuple[str, str, str]) -> dict[str, object]:
    return ingest(*args)


def split_file(path: Path, parts: int) -> list[Path]:
    outs = [path.with_suffix(f".part{k}") for k in range(parts)]
    files = [p.open("wb") for p in outs]
    with path.open("rb") as f:
        for i, line in enumerate(f):
            files[i % parts].write(line)
    for handle in files:
        handle.close()
    return outs


def fresh_db(url: str, workdir: Path, tag: str) -> str:
    if url.startswith("sqlite"):
        target = workdir / f"{tag}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        return f"sqlite:///{target}"
    import psycopg

    name = f"el_bench_process_{tag}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--db", default="sqlite", help="'sqlite' or a postgresql:// server URL")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="el-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "events.ndjson"
    kinds = generate(data, args.events, args.users)
    size_mb = data.stat().st_size / 1e6

    floor = floor_seconds(data)
    pure = processor_seconds(data)
    result: dict[str, object] = {
        "benchmark": "process",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "events": args.events,
        "file_mb": round(size_mb, 1),
        "generated": kinds,
        "floor_read_json_loads": {
            "seconds": round(floor, 3), "events_per_s": round(args.events / floor)
        },
        "processor_in_memory": {
            "seconds": round(pure, 3), "events_per_s": round(args.events / pure)
        },
    }
    db_url = fresh_db(args.db, workdir, "p1")
    result["backend"] = db_url.split(":", 1)[0]
    first = run_ingest_subprocess(data, db_url, workdir / "outcomes1.ndjson")
    second = run_ingest_subprocess(data, db_url, workdir / "outcomes2.ndjson")
    result["first_run"] = first
    result["second_run_all_duplicates"] = second
    result["ratio_first_run_to_floor"] = round(float(first["seconds"]) / floor, 2)  # type: ignore[arg-type]
    result["ratio_second_to_first"] = round(
        float(second["seconds"]) / float(first["seconds"]), 2  # type: ignore[arg-type]
    )
    if args.processes > 1:
        parts = split_file(data, args.processes)
        multi_url = fresh_db(args.db, workdir, f"p{args.processes}")
        from eventledger.store import open_store

        open_store(multi_url).close()  # schema first, so the workers do not race on it
        ctx = multiprocessing.get_context("spawn")
        start = time.perf_counter()
        with ctx.Pool(args.processes) as pool:
            outs = pool.map(
                _ingest_part,
                [(str(p), multi_url, str(p) + ".outcomes") for p in parts],
            )
        wall = time.perf_counter() - start
        result[f"{args.processes}_processes"] = {
            "wall_seconds": round(wall, 3),
            "aggregate_events_per_s": round(args.events / wall),
            "per_process": outs,
            "speedup_vs_1_process": round(float(first["seconds"]) / wall, 2),  # type: ignore[arg-type]
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
