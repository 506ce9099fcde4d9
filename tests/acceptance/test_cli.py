"""The real ``eventledger`` CLI as a subprocess, on SQLite files in a temporary directory."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

REPORT_KEYS = [
    "batch_id",
    "received_at",
    "total",
    "applied",
    "duplicates",
    "rejected",
    "rejected_by_reason",
    "balanced",
]


def run(
    tmp_path: Path, *args: str, stdin: bytes | None = None, db: str | None = "el.db"
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "eventledger", *args]
    if db is not None:
        argv += ["--db", f"sqlite:///{tmp_path / db}"]
    env = {k: v for k, v in os.environ.items() if k != "EVENTLEDGER_DB"}
    env["COLUMNS"] = "120"
    return subprocess.run(
        argv,
        cwd=tmp_path,
        input=stdin.decode("utf-8", "surrogateescape") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def ev(event_id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": event_id,
        "user_id": "u1",
        "type": "click",
        "timestamp": "2026-01-01T11:00:00Z",
    }
    base.update(fields)
    return base


EVENTS: list[Any] = [
    ev("a"),
    ev("b", type="purchase", metadata={"price": "12.50"}),
    ev("a"),
    ev("c", type="Nope"),
    ev("d", user_id=" "),
    ev("p", type="purchase", metadata={"price": "N/A"}),
    ev("p", type="purchase", metadata={"price": 2.5}),
    ev("e", user_id=42, type="view"),
]


def ndjson(events: list[Any], extra_lines: Sequence[str] = ()) -> str:
    lines = [json.dumps(e) for e in events] + list(extra_lines)
    return "\n".join(lines) + "\n"


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_text(ndjson(EVENTS, ["this is not json", "[1, 2]", ""]), encoding="utf-8")
    return path


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eventledger: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- process -----------------------------------------------------------------------------------
def test_process_json_report(tmp_path: Path, events_file: Path) -> None:
    result = run(tmp_path, "process", str(events_file), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report) == [*REPORT_KEYS, "outcomes"]
    assert (report["total"], report["applied"], report["duplicates"], report["rejected"]) == (
        10,
        4,
        1,
        5,
    )
    assert report["rejected_by_reason"] == {
        "invalid_price": 1,
        "invalid_type": 1,
        "malformed_json": 1,
        "missing_user_id": 1,
        "not_an_object": 1,
    }
    assert report["balanced"] is True
    assert [o["index"] for o in report["outcomes"]] == list(range(10))
    assert [o["outcome"] for o in report["outcomes"]] == [
        "applied",
        "applied",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "applied",
        "applied",
        "rejected",
        "rejected",
    ]
    assert report["outcomes"][7]["user_id"] == "42"
    # the report is stored: `report BATCH_ID` prints the same
    stored = run(tmp_path, "report", report["batch_id"])
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout) == report


def test_process_twice_applies_nothing_again(tmp_path: Path, events_file: Path) -> None:
    run(tmp_path, "process", str(events_file), "--json")
    again = json.loads(run(tmp_path, "process", str(events_file), "--json").stdout)
    assert again["applied"] == 0
    # the 4 applied ids, the earlier duplicate, and the rejected "p" whose id is now applied
    assert again["duplicates"] == 6
    assert again["rejected_by_reason"] == {
        "invalid_type": 1,
        "malformed_json": 1,
        "missing_user_id": 1,
        "not_an_object": 1,
    }
    assert again["balanced"] is True


def test_process_from_stdin(tmp_path: Path) -> None:
    body = json.dumps([ev("s1"), ev("s2", user_id="u2"), ev("s1"), 7]).encode()
    result = run(tmp_path, "process", "-", "--json", stdin=body)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["total"], report["applied"], report["duplicates"]) == (4, 2, 1)
    assert report["rejected_by_reason"] == {"not_an_object": 1}


def test_process_stdin_ndjson_with_bom_and_crlf(tmp_path: Path) -> None:
    body = b"\xef\xbb\xbf" + ndjson([ev("x1"), ev("x2")]).replace("\n", "\r\n").encode()
    report = json.loads(run(tmp_path, "process", "-", "--json", stdin=body).stdout)
    assert (report["total"], report["applied"]) == (2, 2)


def test_process_outcomes_file(tmp_path: Path, events_file: Path) -> None:
    out = tmp_path / "outcomes.ndjson"
    result = run(tmp_path, "process", str(events_file), "--outcomes", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "outcomes" not in summary
    assert summary["total"] == 10 and summary["balanced"] is True
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10
    outcomes = [json.loads(line) for line in lines]
    assert [o["index"] for o in outcomes] == list(range(10))
    assert [list(o) for o in outcomes] == [
        ["index", "event_id", "user_id", "outcome", "reason", "detail"]
    ] * 10
    assert outcomes[2]["outcome"] == "duplicate"
    assert outcomes[8]["reason"] == "malformed_json"


def test_process_table_output(tmp_path: Path, events_file: Path) -> None:
    result = run(tmp_path, "process", str(events_file))
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃|").split("│") if c.strip()]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    assert rows["total"] == "10"
    assert rows["applied"] == "4"
    assert rows["duplicates"] == "1"
    assert rows["rejected"] == "5"
    assert rows["malformed_json"] == "1"
    assert rows["invalid_price"] == "1"
    assert rows["balanced"] == "yes"


def test_process_progress_bar_on_large_input(tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson"
    pad = "x" * 150
    with path.open("w", encoding="utf-8") as f:
        for i in range(22_000):
            f.write(json.dumps(ev(f"big-{i}", metadata={"pad": pad})) + "\n")
    assert path.stat().st_size >= 4 << 20
    result = run(tmp_path, "process", str(path), "--json", "--progress")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["applied"] == 22_000
    assert "processing" in result.stderr and "100%" in result.stderr


# -- user ----------------------------------------------------------------------------------------
def test_user_json_and_table(tmp_path: Path, events_file: Path) -> None:
    run(tmp_path, "process", str(events_file))
    result = run(tmp_path, "user", "u1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "user_id": "u1",
        "last_seen_at": "2026-01-01T11:00:00Z",
        "first_seen_at": "2026-01-01T11:00:00Z",
        "applied": 3,
        "counts": {"click": 1, "purchase": 2},
        "total_value": 15.0,
    }
    table = run(tmp_path, "user", "u1")
    assert table.returncode == 0, table.stderr
    assert "2026-01-01T11:00:00Z" in table.stdout and "15.0" in table.stdout
    numeric = json.loads(run(tmp_path, "user", "42", "--json").stdout)
    assert numeric["counts"] == {"view": 1}


def test_user_unknown_is_one_clear_error(tmp_path: Path, events_file: Path) -> None:
    run(tmp_path, "process", str(events_file))
    result = run(tmp_path, "user", "nobody")
    line = assert_one_error_line(result)
    assert "nobody" in line
    assert result.stdout == ""


def test_blank_user_id_left_no_user(tmp_path: Path, events_file: Path) -> None:
    run(tmp_path, "process", str(events_file))
    assert_one_error_line(run(tmp_path, "user", " "))


# -- db upgrade, demo ------------------------------------------------------------------------
def test_db_upgrade_creates_then_keeps_schema(tmp_path: Path) -> None:
    first = run(tmp_path, "db", "upgrade", db="fresh.db")
    assert first.returncode == 0, first.stderr
    assert "v0 -> v1" in first.stdout
    second = run(tmp_path, "db", "upgrade", db="fresh.db")
    assert second.returncode == 0 and "v1 -> v1" in second.stdout
    conn = sqlite3.connect(tmp_path / "fresh.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"events", "users", "user_counts", "batches", "batch_outcomes"} <= tables


def test_default_db_is_eventledger_db_in_working_directory(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "upgrade", db=None)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "eventledger.db").is_file()


def test_demo_prints_a_balanced_report(tmp_path: Path) -> None:
    result = run(tmp_path, "demo", db="demo.db")
    assert result.returncode == 0, result.stderr
    assert "balanced" in result.stdout
    balanced_rows = [line for line in result.stdout.splitlines() if "balanced" in line]
    assert any("yes" in line for line in balanced_rows), result.stdout
    assert "duplicate" in result.stdout and "rejected" in result.stdout


# -- errors: one line, no traceback, non-zero exit ------------------------------------------------
def test_missing_input_file(tmp_path: Path) -> None:
    line = assert_one_error_line(run(tmp_path, "process", "nope.ndjson"))
    assert "nope.ndjson" in line


def test_input_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    assert_one_error_line(run(tmp_path, "process", "adir"))


def test_db_in_missing_directory(tmp_path: Path, events_file: Path) -> None:
    line = assert_one_error_line(run(tmp_path, "process", str(events_file), db="no/such/el.db"))
    assert "does not exist" in line


def test_db_path_is_a_directory(tmp_path: Path, events_file: Path) -> None:
    (tmp_path / "dbdir").mkdir()
    assert_one_error_line(run(tmp_path, "process", str(events_file), db="dbdir"))


def test_db_file_is_not_a_database(tmp_path: Path, events_file: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    line = assert_one_error_line(run(tmp_path, "process", str(events_file), db="junk.db"))
    assert "not a database" in line
    assert_one_error_line(run(tmp_path, "user", "u1", db="junk.db"))
    assert_one_error_line(run(tmp_path, "db", "upgrade", db="junk.db"))


@pytest.mark.parametrize("url", ["mysql://localhost/x", "sqlite://", "nonsense"])
def test_bad_db_url(tmp_path: Path, events_file: Path, url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventledger", "process", str(events_file), "--db", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_error_line(result)


def test_bad_db_url_from_environment(tmp_path: Path, events_file: Path) -> None:
    env = {**os.environ, "EVENTLEDGER_DB": "oracle://db"}
    result = subprocess.run(
        [sys.executable, "-m", "eventledger", "process", str(events_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    line = assert_one_error_line(result)
    assert "oracle://db" in line


def test_unwritable_outcomes_file(tmp_path: Path, events_file: Path) -> None:
    result = run(tmp_path, "process", str(events_file), "--outcomes", "no/dir/o.ndjson")
    assert_one_error_line(result)
    assert not (tmp_path / "el.db").exists() or _event_count(tmp_path / "el.db") == 0


def _event_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_unknown_report(tmp_path: Path) -> None:
    assert_one_error_line(run(tmp_path, "report", "no-such-batch"))


def test_help_lists_commands(tmp_path: Path) -> None:
    result = run(tmp_path, "--help", db=None)
    assert result.returncode == 0
    for command in ("process", "user", "summary", "report", "db", "demo"):
        assert command in result.stdout
