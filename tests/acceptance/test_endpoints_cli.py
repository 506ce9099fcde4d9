"""``eventledger endpoints add|list|remove`` as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "eventledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_add_list_remove(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ep.db'}"
    added = run("endpoints", "add", "https://hooks.example.test/a", "--types", "click,purchase",
                "--db", db, "--json")  # fmt: skip
    assert added.returncode == 0, added.stderr
    created = orjson.loads(added.stdout)
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["click", "purchase"]
    assert created["enabled"] is True

    secret = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    second = run("endpoints", "add", "http://hooks.example.test/b", "--secret", secret,
                 "--disabled", "--db", db)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert secret in second.stdout  # shown once, on creation

    listed = run("endpoints", "list", "--json", "--db", db)
    assert listed.returncode == 0, listed.stderr
    rows = orjson.loads(listed.stdout)
    assert [r["url"] for r in rows] == [
        "https://hooks.example.test/a",
        "http://hooks.example.test/b",
    ]
    assert rows[1]["enabled"] is False
    assert secret not in listed.stdout and created["secret"] not in listed.stdout

    table = run("endpoints", "list", "--db", db)
    assert table.returncode == 0 and created["endpoint_id"] in table.stdout

    removed = run("endpoints", "remove", created["endpoint_id"], "--db", db)
    assert removed.returncode == 0, removed.stderr
    rows = orjson.loads(run("endpoints", "list", "--json", "--db", db).stdout)
    assert [r["url"] for r in rows] == ["http://hooks.example.test/b"]

    again = run("endpoints", "remove", created["endpoint_id"], "--db", db)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines() == [
        f"eventledger: error: no endpoint {created['endpoint_id']!r}"
    ]


def test_bad_endpoint_is_one_clear_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ep.db'}"
    for args, words in [
        (("ftp://x.test/",), "http"),
        (("https://x.test/", "--secret", "plain"), "whsec_"),
        (("https://x.test/", "--types", "Not A Type"), "event type"),
        (("https://x.test/", "--types", " , "), "--types"),
    ]:
        result = run("endpoints", "add", *args, "--db", db)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.stderr
    listed = run("endpoints", "list", "--json", "--db", db)
    assert orjson.loads(listed.stdout) == []
