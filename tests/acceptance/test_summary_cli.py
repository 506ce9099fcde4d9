"""``eventledger summary`` and ``eventledger verify`` as a user runs them (a subprocess)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import orjson
import psycopg
import pytest

from eventledger.legacy import legacy_fetch_user_activity_summary
from eventledger.store.sqlite import sqlite_path


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "eventledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        input=stdin,
    )


EVENTS = "\n".join(
    orjson.dumps(e).decode()
    for e in [
        {"event_id": "1", "user_id": "ann", "type": "click", "timestamp": "2026-01-01T00:00:00Z"},
        {"event_id": "2", "user_id": "ann", "type": "view", "timestamp": "2026-01-01T00:00:01Z"},
        {
            "event_id": "3",
            "user_id": "ann",
            "type": "purchase",
            "timestamp": "2026-01-01T00:00:02Z",
            "metadata": {"price": "12.50", "cart": {"items": [{"price": 99}]}},
        },
        {
            "event_id": "4",
            "user_id": 7,
            "type": "purchase",
            "timestamp": "2026-01-01T00:00:03Z",
            "metadata": {"price": 5},
        },
        {"event_id": "1", "user_id": "ann", "type": "click", "timestamp": "2026-01-01T00:00:00Z"},
    ]
)


def test_summary_and_verify_on_the_own_store(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'el.db'}"
    processed = run("process", "-", "--db", db, "--json", stdin=EVENTS)
    assert processed.returncode == 0, processed.stderr

    summary = run("summary", "ann", "--db", db, "--json")
    assert summary.returncode == 0, summary.stderr
    assert orjson.loads(summary.stdout) == {
        "click": 1,
        "view": 1,
        "purchase": 1,
        "total_value": 12.5,
    }
    assert orjson.loads(run("summary", "7", "--db", db, "--json").stdout)["total_value"] == 5.0
    table = run("summary", "ann", "--db", db)
    assert table.returncode == 0 and "total_value" in table.stdout and "12.5" in table.stdout
    nobody = run("summary", "nobody", "--db", db, "--json")
    assert nobody.returncode == 0
    assert orjson.loads(nobody.stdout) == {"click": 0, "view": 0, "purchase": 0, "total_value": 0.0}

    ok = run("verify", "--db", db)
    assert ok.returncode == 0, ok.stderr
    assert "verified 2 user(s)" in ok.stdout
    ok_json = run("verify", "ann", "--db", db, "--json")
    assert ok_json.returncode == 0
    assert orjson.loads(ok_json.stdout) == {
        "user_id": "ann",
        "users_checked": 1,
        "ok": True,
        "mismatches": [],
    }

    with closing(sqlite3.connect(sqlite_path(db))) as conn:
        conn.execute("UPDATE users SET total_value = 13.5 WHERE user_id = 'ann'")
        conn.commit()
    bad = run("verify", "--db", db, "--json")
    assert bad.returncode == 3, bad.stderr
    assert orjson.loads(bad.stdout)["mismatches"] == [
        {"user_id": "ann", "field": "total_value", "maintained": 13.5, "recomputed": 12.5}
    ]
    bad_table = run("verify", "--db", db)
    assert bad_table.returncode == 3
    assert "total_value" in bad_table.stdout and "13.5" in bad_table.stdout
    assert run("verify", "7", "--db", db).returncode == 0  # only ann is wrong

    unknown = run("verify", "nobody", "--db", db)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "eventledger: error: unknown user 'nobody': no event of this user was seen"
    )


@pytest.mark.postgres
def test_summary_of_an_existing_legacy_table(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE legacy_events (id BIGINT NOT NULL, user_id BIGINT NOT NULL,"
            " type VARCHAR(32) NOT NULL, metadata JSONB DEFAULT '{}'::jsonb,"
            " PRIMARY KEY (id, user_id))"
        )
        conn.execute(
            "INSERT INTO legacy_events VALUES"
            """ (1, 5, 'click', '{"a": [1, {"b": null}]}'),"""
            """ (2, 5, 'purchase', '{"price": "12.5"}'),"""
            """ (3, 5, 'purchase', '{"price": "N/A"}'), (4, 5, 'purchase', '{"price": 7}'),"""
            """ (5, 5, 'view', NULL), (1, 6, 'purchase', '{"price": 100}')"""
        )
    with psycopg.connect(pg_url) as conn:
        want = legacy_fetch_user_activity_summary(conn, 5, "legacy_events")
    got = run("summary", "5", "--source", pg_url, "--table", "legacy_events", "--json")
    assert got.returncode == 0, got.stderr
    assert (
        orjson.loads(got.stdout)
        == want
        == {
            "click": 1,
            "view": 1,
            "purchase": 3,
            "total_value": 19.5,
        }
    )
    qualified = run("summary", "5", "--source", pg_url, "--table", "public.legacy_events")
    assert qualified.returncode == 0 and "19.5" in qualified.stdout

    bad_user = run("summary", "ann", "--source", pg_url, "--table", "legacy_events")
    assert bad_user.returncode == 1
    assert bad_user.stderr.count("\n") == 1 and "Traceback" not in bad_user.stderr
    assert "user_id must be an integer" in bad_user.stderr

    missing = run("summary", "5", "--source", pg_url, "--table", "nope")
    assert missing.returncode == 1
    assert "table 'nope' does not exist" in missing.stderr and "Traceback" not in missing.stderr
