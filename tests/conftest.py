"""Shared fixtures: real SQLite files and real PostgreSQL databases.

PostgreSQL: ``EVENTLEDGER_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/test) names
a server and a maintenance database; each test that asks for ``pg_url`` gets a fresh database
of its own, created from a template that holds the current schema, and dropped afterwards.
Where no server answers the tests skip with the reason, unless ``EVENTLEDGER_REQUIRE_PG=1``
(set by CI) turns that into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
_TEMPLATE = f"el_template_{os.getpid()}"


def pg_admin_url() -> str:
    return os.environ.get("EVENTLEDGER_TEST_PG", PG_DEFAULT)


def with_db(url: str, dbname: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def pg_available() -> str | None:
    """None when the server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(pg_admin_url(), connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: no server for the tests
        return f"PostgreSQL at {pg_admin_url()} does not answer: {exc}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The admin URL of a reachable PostgreSQL with a template holding the schema."""
    why = pg_available()
    if why is not None:
        if os.environ.get("EVENTLEDGER_REQUIRE_PG") == "1":
            pytest.fail(f"EVENTLEDGER_REQUIRE_PG=1 but {why}")
        pytest.skip(why)
    import psycopg

    admin = pg_admin_url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{_TEMPLATE}"')
    from eventledger.store import open_store

    template_url = with_db(admin, _TEMPLATE)
    store = open_store(template_url)
    store.close()
    yield admin
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database with the current schema, dropped after the test."""
    import psycopg

    name = f"el_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE}"')
    yield with_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite file (created with its schema on first open)."""
    return f"sqlite:///{tmp_path / 'eventledger.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh database on each backend: the contract tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'eventledger.db'}"
    return str(request.getfixturevalue("pg_url"))
