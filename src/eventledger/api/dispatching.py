"""The bridge between the service and the dispatcher (:mod:`eventledger.dispatch`)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def build_dispatch_config(**options: Any) -> Any:
    """A ``DispatchConfig`` from the given options (None: the dispatcher's default)."""
    try:
        from ..dispatch import DispatchConfig  # type: ignore[attr-defined]
    except ImportError:
        return None
    _ = DispatchConfig
    raise ConfigError("dispatcher integration pending")
