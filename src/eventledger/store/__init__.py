"""Stores: one interface (:class:`Store`), a SQLite and a PostgreSQL backend."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError
from .base import Endpoint, Store

DEFAULT_URL = "sqlite:///eventledger.db"

__all__ = ["DEFAULT_URL", "Endpoint", "Store", "open_store", "redact_url", "resolve_url"]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for output and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def resolve_url(url: str | None) -> str:
    """The database URL: the argument, else ``EVENTLEDGER_DB``, else the embedded default."""
    return url or os.environ.get("EVENTLEDGER_DB") or DEFAULT_URL


def open_store(url: str | None = None, *, upgrade: bool = True) -> Store:
    """Open (and by default create or migrate) the store at ``url``."""
    resolved = resolve_url(url)
    if resolved.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        return SQLiteStore(resolved, upgrade=upgrade)
    if resolved.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(resolved, upgrade=upgrade)
    raise ConfigError(
        f"unsupported database URL {resolved!r}: use sqlite:///PATH or postgresql://..."
    )
