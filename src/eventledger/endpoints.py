"""Validation of webhook endpoints (URL, secret, event-type filter)."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

from .errors import ConfigError
from .processor import TYPE_PATTERN
from .store.base import Endpoint


def validate_endpoint(endpoint: Endpoint) -> Endpoint:
    """The endpoint if it is well formed, else :class:`ConfigError` with the reason."""
    parts = urlsplit(endpoint.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint URL must be http(s)://host/..., got {endpoint.url!r}")
    if endpoint.secret is not None:
        if not endpoint.secret.startswith("whsec_"):
            raise ConfigError("endpoint secret must start with 'whsec_'")
        try:
            key = base64.b64decode(endpoint.secret.removeprefix("whsec_"), validate=True)
        except ValueError as exc:
            raise ConfigError("endpoint secret must be 'whsec_' followed by base64") from exc
        if not 24 <= len(key) <= 64:
            raise ConfigError("endpoint secret must hold 24 to 64 bytes")
    if endpoint.event_types is not None:
        for event_type in endpoint.event_types:
            if not TYPE_PATTERN.match(event_type):
                raise ConfigError(f"invalid event type in filter: {event_type!r}")
    return endpoint
