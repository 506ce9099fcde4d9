"""Running the service: uvicorn serving :func:`create_app`, with graceful shutdown on SIGTERM.

The dispatcher (roles ``all`` and ``worker``) runs inside the app's lifespan, so uvicorn's
graceful shutdown (stop accepting, let requests finish, then the lifespan's shutdown) also
stops the dispatcher gracefully: claims stop, requests in flight finish and are recorded.
A ``worker`` process serves only ``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from types import FrameType

import uvicorn

from ..errors import ConfigError
from ..ledger import Ledger
from .app import create_app
from .config import DEFAULT_GRACEFUL_TIMEOUT_S, ApiConfig, check_bind


def run_server(
    config: ApiConfig,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    graceful_timeout: int = DEFAULT_GRACEFUL_TIMEOUT_S,
) -> int:
    """Serve until SIGINT/SIGTERM; return the process exit code."""
    check_bind(host, config)
    # Open (and migrate) the store once up front, so that a bad URL or an unusable
    # database is one clear error line rather than a failed startup inside uvicorn.
    Ledger(config.db_url).close()
    sock = listen_socket(host, port)
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=graceful_timeout,
            server_header=False,
        )
    )
    logging.getLogger("eventledger").setLevel(log_level.upper())
    # uvicorn re-raises a captured signal after its graceful shutdown; with these handlers
    # in place that re-raise is a no-op and the process exits with its own status.
    previous = {
        sig: signal.signal(sig, _ignore_after_shutdown) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that a port in use is one clear error line.

    Created with ``IPPROTO_TCP`` explicitly: asyncio sets ``TCP_NODELAY`` only on sockets
    whose protocol says TCP, and accepted sockets inherit the listener's. Without it, Nagle
    and delayed ACKs added ~40 ms to every keep-alive request after the first.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {why}") from exc
    return sock


def _ignore_after_shutdown(sig: int, frame: FrameType | None) -> None:
    """Installed only around ``server.serve()``, which replaces it while it runs."""
