"""Schema creation and migrations on both backends.

A database created in one go must have the same catalog (tables, columns, indexes,
constraints) as one that went through the migrations step by step, upgrading twice changes
nothing, several processes may upgrade at once, and a schema newer than the code is refused.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventledger.errors import SchemaError
from eventledger.store import open_store
from eventledger.store.base import load_migrations, split_statements
from eventledger.store.postgres import VERSION_TABLE, VERSION_TABLE_DDL

# -- catalogs ------------------------------------------------------------------------------


def sqlite_catalog(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            " ORDER BY type, name"
        ).fetchall()
        catalog: dict[str, Any] = {"objects": objects, "version": None}
        for kind, name, _ in objects:
            if kind == "table":
                catalog[f"columns {name}"] = conn.execute(
                    f"SELECT * FROM pragma_table_info('{name}')"
                ).fetchall()
                catalog[f"indexes {name}"] = sorted(
                    (
                        idx[1],
                        idx[2],
                        conn.execute(f"SELECT * FROM pragma_index_info('{idx[1]}')").fetchall(),
                    )
                    for idx in conn.execute(f"SELECT * FROM pragma_index_list('{name}')")
                )
        catalog["version"] = conn.execute("PRAGMA user_version").fetchone()[0]
        return catalog
    finally:
        conn.close()


def pg_catalog(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url) as conn:

        def q(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(sql).fetchall()]

        return {
            "columns": q(
                "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
                " column_default FROM information_schema.columns WHERE table_schema = 'public'"
                " ORDER BY 1, 3"
            ),
            "indexes": q(
                "SELECT tablename, indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = 'public' ORDER BY 1, 2"
            ),
            "constraints": q(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
            ),
            "functions": q(
                "SELECT proname, pg_get_functiondef(oid) FROM pg_proc"
                " WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
            ),
            "triggers": q(
                "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"
                " ORDER BY 1, 2"
            ),
            "versions": q(f"SELECT version FROM {VERSION_TABLE} ORDER BY 1"),
        }


# -- empty databases per backend ---------------------------------------------------------


class Backend:
    """Makes empty databases of one backend and applies migrations by hand."""

    def __init__(self, name: str, tmp_path: Path, pg_server: str | None) -> None:
        self.name = name
        self.tmp_path = tmp_path
        self.pg_server = pg_server
        self.created: list[str] = []

    def empty(self) -> str:
        return f"sqlite:///{self.tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"

    def catalog(self, url: str) -> dict[str, Any]:
        if self.name == "sqlite":
            return sqlite_catalog(url.removeprefix("sqlite:///"))
        return pg_catalog(url)

    def apply_by_hand(self, url: str, upto: int) -> None:
        """Run migrations 1..upto directly and record the version as the store would."""
        migrations = [m for m in load_migrations(self.name) if m[0] <= upto]
        if self.name == "sqlite":
            conn = sqlite3.connect(url.removeprefix("sqlite:///"))
            try:
                for _, sql in migrations:
                    for statement in split_statements(sql):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={upto}")
                conn.commit()
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(VERSION_TABLE_DDL)
            for version, sql in migrations:
                conn.execute(sql.encode())
                conn.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (%s, 0)",
                    (version,),
                )

    def set_version(self, url: str, version: int) -> None:
        if self.name == "sqlite":
            conn = sqlite3.connect(url.removeprefix("sqlite:///"))
            try:
                conn.execute(f"PRAGMA user_version={version}")
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (%s, 0)", (version,)
            )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", tmp_path, None)
        return
    import psycopg

    admin: str = request.getfixturevalue("pg_server")
    made = _PgBackend("postgres", tmp_path, admin)
    yield made
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in made.created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _PgBackend(Backend):
    def empty(self) -> str:
        import psycopg

        assert self.pg_server is not None
        name = f"el_mig_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.pg_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        parts = urlsplit(self.pg_server)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


# -- tests ---------------------------------------------------------------------------------


def test_fresh_schema_equals_every_migration_path(backend: Backend) -> None:
    migrations = load_migrations(backend.name)
    latest = migrations[-1][0]
    assert [v for v, _ in migrations] == list(range(1, latest + 1)), "numbered 0001, 0002, ..."
    fresh = backend.empty()
    with open_store(fresh) as store:
        assert store.schema_version() == latest
    expected = backend.catalog(fresh)
    assert expected["columns events" if backend.name == "sqlite" else "columns"]
    # From every intermediate version, upgrading lands on the same catalog.
    for start in range(1, latest + 1):
        url = backend.empty()
        backend.apply_by_hand(url, start)
        with open_store(url, upgrade=False) as store:
            assert store.schema_version() == start
            assert store.upgrade() == latest
        assert backend.catalog(url) == expected, f"upgrade from v{start} differs"


def test_upgrading_twice_changes_nothing(backend: Backend) -> None:
    url = backend.empty()
    with open_store(url, upgrade=False) as store:
        assert store.schema_version() == 0
        latest = store.upgrade()
        first = backend.catalog(url)
        assert store.upgrade() == latest
        assert store.schema_version() == latest
    with open_store(url) as store:
        assert store.upgrade() == latest
    assert backend.catalog(url) == first


def test_concurrent_upgrades_of_a_new_database_are_safe(backend: Backend) -> None:
    url = backend.empty()
    errors: list[BaseException] = []
    versions: list[int] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            start.wait(30)
            with open_store(url, upgrade=False) as store:
                versions.append(store.upgrade())
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    latest = load_migrations(backend.name)[-1][0]
    assert versions == [latest] * 4
    catalog = backend.catalog(url)
    if backend.name == "postgres":
        assert catalog["versions"] == [(v,) for v in range(1, latest + 1)]
    else:
        assert catalog["version"] == latest


def test_a_schema_newer_than_the_code_is_refused(backend: Backend) -> None:
    url = backend.empty()
    with open_store(url) as store:
        latest = store.schema_version()
    backend.set_version(url, latest + 1)
    with pytest.raises(SchemaError, match="newer"):
        open_store(url)


@pytest.mark.postgres
def test_both_backends_have_the_same_tables_and_columns(
    tmp_path: Path, pg_url: str, sqlite_url: str
) -> None:
    open_store(sqlite_url).close()
    lite = sqlite_catalog(sqlite_url.removeprefix("sqlite:///"))
    lite_columns = {
        (name.removeprefix("columns "), col[1], bool(col[3]) or bool(col[5]))
        for name, cols in lite.items()
        if name.startswith("columns ")
        for col in cols
    }
    pg_columns = {
        (table, column, nullable == "NO")
        for table, column, _, _, nullable, _ in pg_catalog(pg_url)["columns"]
        if table != VERSION_TABLE
    }
    assert lite_columns == pg_columns
