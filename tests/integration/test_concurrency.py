"""Several real OS processes on one database, and a process killed mid-batch.

The guarantees (SPEC §1, §2): every event id is applied exactly once whatever the number of
writers, per-user counts and ``last_seen_at`` stay exact, every report balances, and a crash
leaves a consistent database from which re-running the same input finishes the job.
The expected totals come from an oracle computed here from the generated input.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventledger import Ledger

RECEIVED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BASE_MS = int(datetime(2025, 12, 1, tzinfo=UTC).timestamp() * 1000)
TYPES = ("click", "view", "purchase")


def make_event(n: int, users: int) -> dict[str, Any]:
    """The one content of event id ``e{n}`` (the same in every file that carries it)."""
    rng = random.Random(n)
    kind = TYPES[n % 3]
    event: dict[str, Any] = {
        "event_id": f"e{n}",
        "user_id": f"u{rng.randrange(users)}",
        "type": kind,
        "timestamp": BASE_MS + rng.randrange(10**9),
        "metadata": {"n": n, "tags": ["a", {"b": n % 7}]},
    }
    if kind == "purchase":
        event["metadata"]["price"] = rng.randrange(1, 400) / 4  # exact in binary
    return event


@dataclass
class Oracle:
    """What the whole set of inputs must leave in the store."""

    valid_ids: set[str] = field(default_factory=set)
    occurrences: int = 0
    rejected: int = 0
    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    value: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    first_seen: dict[str, int] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)

    def add(self, line: bytes, events: dict[str, dict[str, Any]]) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            self.rejected += 1
            return
        ts_us = obj["timestamp"] * 1000
        user = obj["user_id"]
        self.last_seen[user] = max(self.last_seen.get(user, ts_us), ts_us)
        if obj["type"] not in TYPES:
            self.rejected += 1
            return
        self.occurrences += 1
        event_id = obj["event_id"]
        if event_id in self.valid_ids:
            return
        self.valid_ids.add(event_id)
        assert events[event_id] == obj
        self.counts[user][obj["type"]] += 1
        self.value[user] += obj["metadata"].get("price", 0.0)
        self.first_seen[user] = min(self.first_seen.get(user, ts_us), ts_us)


def write_inputs(
    folder: Path, files: int, ids: int, per_file: int, users: int, seed: int
) -> tuple[list[Path], Oracle]:
    """``files`` NDJSON inputs drawing overlapping ids from one pool, plus their oracle."""
    rng = random.Random(seed)
    events = {f"e{n}": make_event(n, users) for n in range(ids)}
    oracle = Oracle()
    paths = []
    for k in range(files):
        picked = rng.sample(range(ids), per_file)
        lines = [json.dumps(events[f"e{n}"]).encode() for n in picked]
        lines += [rng.choice(lines) for _ in range(per_file // 10)]  # duplicates in the file
        for j in range(per_file // 20):  # rejected: a bad type (user still seen), bad JSON
            bad = dict(events[f"e{rng.randrange(ids)}"], event_id=f"bad{k}-{j}", type="Bad")
            lines.append(json.dumps(bad).encode())
            lines.append(b'{"event_id": "m%d-%d", "user_id": ' % (k, j))
        rng.shuffle(lines)
        path = folder / f"input{k}.ndjson"
        path.write_bytes(b"\n".join(lines) + b"\n")
        for line in lines:
            oracle.add(line, events)
        paths.append(path)
    return paths, oracle


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url) as pg:
        return [tuple(r) for r in pg.execute(sql).fetchall()]


def check_store_matches(url: str, oracle: Oracle, *, check_last_seen: bool = True) -> None:
    """The store holds exactly what the oracle says, and its verification agrees."""
    with Ledger(url) as ledger:
        for user, counts in oracle.counts.items():
            activity = ledger.activity(user)
            assert activity is not None, user
            assert activity["counts"] == dict(sorted(counts.items())), user
            assert activity["applied"] == sum(counts.values())
            assert activity["total_value"] == pytest.approx(oracle.value[user])
            assert activity["first_seen_at"] == _iso(oracle.first_seen[user])
            if check_last_seen:
                assert activity["last_seen_at"] == _iso(oracle.last_seen[user]), user
        store = ledger.store
        recount = store.recount_from_events(None)
        assert [(u, t, n) for u, t, n, _, _ in recount] == store.maintained_counts(None)
        applied_by_user = Counter[str]()
        for user, _, n, _, _ in recount:
            applied_by_user[user] += n
        assert {u: a for u, a, _, _ in store.maintained_users(None) if a} == dict(applied_by_user)
    assert rows(url, "SELECT count(*), count(DISTINCT event_id) FROM events") == [
        (len(oracle.valid_ids), len(oracle.valid_ids))
    ]
    # Per-user sequences are 1..n without gaps or repeats.
    for user, n, low, high, distinct in rows(
        url,
        "SELECT user_id, count(*), min(user_seq), max(user_seq), count(DISTINCT user_seq)"
        " FROM events GROUP BY user_id",
    ):
        assert (low, high, distinct) == (1, n, n), user


def _iso(us: int) -> str:
    from eventledger.timeutil import format_us

    text = format_us(us)
    assert text is not None
    return text


def ingest_worker(url: str, path: str, out: str, chunk_size: int, barrier: Any) -> None:
    """Run in a spawned process: wait for the others, then process one input file."""
    from eventledger.inputs import iter_events

    with Ledger(url, chunk_size=chunk_size) as ledger:
        barrier.wait(60)
        outcomes: list[tuple[str | None, str]] = []
        with open(path, "rb") as f:
            report = ledger.process(
                iter_events(f),
                received_at=RECEIVED,
                keep_outcomes=False,
                outcome_sink=lambda o: outcomes.append((o.event_id, o.outcome.value)),
            )
    Path(out).write_text(json.dumps({"report": report.summary_dict(), "outcomes": outcomes}))


@pytest.mark.slow
def test_processes_ingesting_overlapping_batches_apply_each_id_once(
    store_url: str, tmp_path: Path
) -> None:
    processes = 3
    paths, oracle = write_inputs(tmp_path, processes, ids=4000, per_file=2500, users=40, seed=1)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    outs = [tmp_path / f"out{k}.json" for k in range(processes)]
    workers = [
        ctx.Process(target=ingest_worker, args=(store_url, str(p), str(o), 100, barrier))
        for p, o in zip(paths, outs, strict=True)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0] * processes

    results = [json.loads(o.read_text()) for o in outs]
    reports = [r["report"] for r in results]
    assert all(r["balanced"] for r in reports)
    assert sum(r["applied"] for r in reports) == len(oracle.valid_ids)
    assert sum(r["duplicates"] for r in reports) == oracle.occurrences - len(oracle.valid_ids)
    assert sum(r["rejected"] for r in reports) == oracle.rejected
    # Each id is applied by exactly one process; every other sighting is a duplicate.
    applied = Counter(e for r in results for e, kind in r["outcomes"] if kind == "applied")
    assert set(applied) == oracle.valid_ids and set(applied.values()) == {1}
    seen_by = defaultdict(set)
    for k, r in enumerate(results):
        for event_id, _ in r["outcomes"]:
            seen_by[event_id].add(k)
    shared = {e for e in oracle.valid_ids if len(seen_by[e]) > 1}
    assert len(shared) > 1000  # the inputs really overlap
    check_store_matches(store_url, oracle)
    # The stored reports balance too.
    stored = rows(store_url, "SELECT total, applied, duplicates, rejected FROM batches")
    assert len(stored) == processes and all(t == a + d + r for t, a, d, r in stored)


def _event_count(url: str) -> int:
    try:
        return int(rows(url, "SELECT count(*) FROM events")[0][0])
    except Exception:  # the schema may not exist yet while the process starts
        return 0


@pytest.mark.slow
def test_a_process_killed_mid_batch_leaves_a_consistent_store(
    store_url: str, tmp_path: Path
) -> None:
    (path,), oracle = write_inputs(tmp_path, 1, ids=60_000, per_file=60_000, users=300, seed=2)
    cmd = [sys.executable, "-m", "eventledger", "process", str(path), "--db", store_url]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with (tmp_path / "killed.err").open("wb") as err:
        proc = subprocess.Popen(
            [*cmd, "--json", "--no-progress"], stdout=subprocess.DEVNULL, stderr=err, env=env
        )
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        committed = _event_count(store_url)
        if committed >= 4000:  # some chunks are in, most are still to come
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the process ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    committed = _event_count(store_url)
    assert 0 < committed < len(oracle.valid_ids)
    # Consistent after the crash: the maintained aggregate matches the stored events.
    with Ledger(store_url) as ledger:
        store = ledger.store
        recount = store.recount_from_events(None)
        assert [(u, t, n) for u, t, n, _, _ in recount] == store.maintained_counts(None)
        assert sum(a for _, a, _, _ in store.maintained_users(None)) == committed
    assert rows(store_url, "SELECT count(*) FROM batches") == [(0,)]

    # Running the same input again completes the job, every event applied exactly once.
    done = subprocess.run(
        [*cmd, "--json", "--no-progress"], capture_output=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["balanced"] is True
    assert report["applied"] == len(oracle.valid_ids) - committed
    assert report["duplicates"] == oracle.occurrences - report["applied"]
    assert report["rejected"] == oracle.rejected
    # last_seen_at from the killed run's partial chunks is at most the final maximum: exact.
    check_store_matches(store_url, oracle)
