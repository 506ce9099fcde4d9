"""Configuration of the HTTP service: named defaults, then ``EVENTLEDGER_*``, then flags."""

from __future__ import annotations

import enum
import ipaddress
import os
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# A batch of 1,000 typical events is ~300 KB; these bounds keep one request's memory small
# while leaving room for large client batches.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_EVENTS = 100_000
# How long uvicorn lets open requests finish on SIGTERM before closing them.
DEFAULT_GRACEFUL_TIMEOUT_S = 30

ENV_TOKEN = "EVENTLEDGER_API_TOKEN"
ENV_MAX_BODY_BYTES = "EVENTLEDGER_API_MAX_BODY_BYTES"
ENV_MAX_EVENTS = "EVENTLEDGER_API_MAX_EVENTS"


class Role(enum.StrEnum):
    """What one ``serve`` process runs: the HTTP API, the dispatcher, or both."""

    ALL = "all"
    API = "api"
    WORKER = "worker"

    @property
    def runs_api(self) -> bool:
        return self is not Role.WORKER

    @property
    def runs_dispatcher(self) -> bool:
        return self is not Role.API


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """Everything :func:`eventledger.api.create_app` needs; nothing is read at import.

    ``token`` None means no authentication (only allowed on a loopback bind, see
    :func:`check_bind`). ``dispatch`` is the dispatcher's ``DispatchConfig`` (None: its
    defaults) and is used only by roles that run the dispatcher.
    """

    db_url: str | None = None
    token: str | None = None
    role: Role = Role.API
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_events: int = DEFAULT_MAX_EVENTS
    dispatch: Any = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            raise ConfigError(f"unknown role {self.role!r}: use all, api or worker") from None
        if self.max_body_bytes < 1:
            raise ConfigError("max body bytes must be >= 1")
        if self.max_events < 1:
            raise ConfigError("max events must be >= 1")
        if self.token is not None and not self.token.strip():
            raise ConfigError(f"{ENV_TOKEN} is set but blank")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ApiConfig:
        """Defaults, then the environment, then ``overrides`` whose value is not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        token = env.get(ENV_TOKEN)
        if token is not None and token != "":
            values["token"] = token
        for name, key in ((ENV_MAX_BODY_BYTES, "max_body_bytes"), (ENV_MAX_EVENTS, "max_events")):
            raw = env.get(name)
            if raw:
                try:
                    values[key] = int(raw)
                except ValueError as exc:
                    raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_changes(self, **changes: Any) -> ApiConfig:
        return replace(self, **changes)


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: ApiConfig) -> None:
    """Refuse to expose an unauthenticated API beyond this machine."""
    if config.role.runs_api and config.token is None and not is_loopback_host(host):
        raise ConfigError(
            f"refusing to listen on {host} without authentication: set {ENV_TOKEN} "
            "or bind 127.0.0.1"
        )
