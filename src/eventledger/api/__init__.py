"""The HTTP service of SPEC §5 (FastAPI + uvicorn): :func:`create_app` builds it from an
:class:`ApiConfig`; ``eventledger serve`` runs it with the dispatcher."""

from __future__ import annotations

from .app import create_app
from .config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_EVENTS,
    ApiConfig,
    Role,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_EVENTS", "ApiConfig", "Role", "create_app"]
