"""CLI commands of the service: ``serve`` and ``endpoints add|list|remove``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from ..dispatch.cli import add_dispatch_options, dispatch_config_from_args
from ..errors import ConfigError, NotFoundError
from ..ledger import Ledger
from .config import DEFAULT_HOST, DEFAULT_PORT, ApiConfig, Role


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` and ``endpoints`` to the ``eventledger`` parser."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the HTTP API and the dispatcher (or one role of them)",
        description="Serve the HTTP API (OpenAPI at /docs) and run the dispatcher in one "
        "process (--role all), or only one of them so that the roles scale separately on "
        "PostgreSQL. Requires EVENTLEDGER_API_TOKEN to listen beyond loopback.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=Role.ALL.value,
        help="all: API + dispatcher; api: HTTP API only; worker: dispatcher only "
        "(with /healthz and /metrics)",
    )
    p.add_argument("--max-body-bytes", type=int, help="largest POST /v1/events body")
    p.add_argument("--max-events", type=int, help="most events in one POST /v1/events")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g = p.add_argument_group("dispatcher (roles all and worker)")
    add_dispatch_options(g)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("endpoints", help="manage webhook endpoints")
    esub = p.add_subparsers(dest="endpoints_command", required=True, metavar="ACTION")
    pa = esub.add_parser("add", parents=[common], help="register a webhook endpoint")
    pa.add_argument("url", metavar="URL")
    pa.add_argument("--secret", help="whsec_... signing secret (generated when not given)")
    pa.add_argument("--types", help="comma-separated event types to deliver (default: all)")
    pa.add_argument("--disabled", action="store_true", help="register it disabled")
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(handler=cmd_endpoints_add)
    pl = esub.add_parser("list", parents=[common], help="list webhook endpoints")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(handler=cmd_endpoints_list)
    pr = esub.add_parser("remove", parents=[common], help="remove a webhook endpoint")
    pr.add_argument("endpoint_id", metavar="ID")
    pr.set_defaults(handler=cmd_endpoints_remove)


# -- serve -----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run_server

    role = Role(args.role)
    config = ApiConfig.from_env(
        db_url=args.db,
        role=role,
        max_body_bytes=args.max_body_bytes,
        max_events=args.max_events,
        dispatch=dispatch_config_from_args(args) if role.runs_dispatcher else None,
    )
    return run_server(config, host=args.host, port=args.port, log_level=args.log_level)


# -- endpoints -------------------------------------------------------------------------------
def _types(text: str | None) -> list[str] | None:
    if text is None:
        return None
    types = [t.strip() for t in text.split(",") if t.strip()]
    if not types:
        raise ConfigError("--types needs at least one event type, e.g. --types click,purchase")
    return types


def cmd_endpoints_add(args: argparse.Namespace) -> int:
    with Ledger(args.db) as ledger:
        endpoint = ledger.add_endpoint(
            args.url, secret=args.secret, event_types=_types(args.types), enabled=not args.disabled
        )
    data = endpoint.to_dict(show_secret=True)
    if args.json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"endpoint {endpoint.endpoint_id} -> {endpoint.url}")
    print(f"secret (shown once): {endpoint.secret}")
    return 0


def cmd_endpoints_list(args: argparse.Namespace) -> int:
    with Ledger(args.db) as ledger:
        endpoints = ledger.store.list_endpoints()
    if args.json:
        data = [e.to_dict() for e in endpoints]
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not endpoints:
        print("no endpoints registered")
        return 0
    table = Table(title="webhook endpoints")
    for column in ("id", "url", "event types", "enabled", "created"):
        table.add_column(column)
    for e in endpoints:
        table.add_row(
            e.endpoint_id,
            e.url,
            ",".join(e.event_types) if e.event_types is not None else "(all)",
            "yes" if e.enabled else "no",
            str(e.to_dict()["created_at"]),
        )
    Console(width=max(100, Console().width)).print(table)
    return 0


def cmd_endpoints_remove(args: argparse.Namespace) -> int:
    with Ledger(args.db) as ledger:
        if not ledger.store.remove_endpoint(args.endpoint_id):
            raise NotFoundError(f"no endpoint {args.endpoint_id!r}")
    print(f"removed endpoint {args.endpoint_id}")
    return 0
