"""``eventledger dispatch`` and ``eventledger dlq list|retry|skip``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import ConfigError
from ..store import open_store
from ..store.deliveries import DeliveryInfo, DeliveryState, check_state
from .model import DispatchConfig
from .orchestrator import EventOrchestrator
from .retry import RetryPolicy

_DEFAULTS = DispatchConfig()


def add_dispatch_options(parser: Any) -> None:
    """The dispatcher's options, shared by ``dispatch`` and ``serve`` (roles all, worker).
    Each defaults to None, which keeps :class:`DispatchConfig`'s own default."""
    parser.add_argument(
        "--workers", type=int, help=f"concurrent delivery workers (default {_DEFAULTS.workers})"
    )
    parser.add_argument(
        "--max-per-host",
        type=int,
        help=f"requests in flight to one host at most (default {_DEFAULTS.max_per_host})",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        help=f"total seconds per request (default {_DEFAULTS.request_timeout})",
    )
    parser.add_argument(
        "--lease",
        type=float,
        help="seconds a claimed delivery stays ours before another process may reclaim it"
        f" (default {_DEFAULTS.lease_duration}, or 3x --request-timeout when longer)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        help=f"failed attempts before DEAD_LETTER (default {_DEFAULTS.retry.max_attempts})",
    )
    parser.add_argument(
        "--retry-initial",
        type=float,
        help=f"seconds to wait after a first failure (default {_DEFAULTS.retry.initial})",
    )
    parser.add_argument(
        "--retry-maximum",
        type=float,
        help=f"longest wait between attempts (default {_DEFAULTS.retry.maximum})",
    )
    parser.add_argument(
        "--allow-private-targets",
        action="store_true",
        help="allow loopback/private/link-local targets (local testing only)",
    )


def dispatch_config_from_args(args: argparse.Namespace) -> DispatchConfig:
    """The ``DispatchConfig`` of :func:`add_dispatch_options`' options."""
    retry: dict[str, Any] = {}
    for option, field in (
        ("max_attempts", "max_attempts"),
        ("retry_initial", "initial"),
        ("retry_maximum", "maximum"),
    ):
        if getattr(args, option) is not None:
            retry[field] = getattr(args, option)
    options: dict[str, Any] = {"allow_private_targets": args.allow_private_targets}
    for option, field in (
        ("workers", "workers"),
        ("max_per_host", "max_per_host"),
        ("request_timeout", "request_timeout"),
        ("lease", "lease_duration"),
    ):
        if getattr(args, option) is not None:
            options[field] = getattr(args, option)
    if args.request_timeout is not None and args.lease is None:
        # The lease must outlast a request, whatever the timeout chosen.
        options["lease_duration"] = max(_DEFAULTS.lease_duration, args.request_timeout * 3)
    try:
        return DispatchConfig(retry=RetryPolicy(**retry), **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid dispatcher options: {exc}") from exc


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the dispatcher's commands to the ``eventledger`` parser."""
    p = sub.add_parser(
        "dispatch",
        parents=[common],
        help="deliver pending webhooks until SIGTERM/SIGINT, then drain and exit",
    )
    add_dispatch_options(p)
    p.set_defaults(handler=cmd_dispatch)

    p = sub.add_parser("dlq", help="inspect and resolve dead-lettered deliveries")
    dsub = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    pl = dsub.add_parser("list", parents=[common], help="list deliveries (DEAD_LETTER by default)")
    pl.add_argument("--state", default="DEAD_LETTER", help="state to list, or 'all'")
    pl.add_argument("--limit", type=int, default=100)
    pl.add_argument("--offset", type=int, default=0)
    pl.add_argument("--json", action="store_true", help="one JSON document on stdout")
    pl.set_defaults(handler=cmd_dlq_list)
    pr = dsub.add_parser("retry", parents=[common], help="send a dead letter again (PENDING)")
    pr.add_argument("delivery_id", metavar="ID")
    pr.set_defaults(handler=cmd_dlq_retry)
    ps = dsub.add_parser("skip", parents=[common], help="skip a dead letter (SKIPPED)")
    ps.add_argument("delivery_id", metavar="ID")
    ps.set_defaults(handler=cmd_dlq_skip)


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (about +25% requests/s, MEASURED.md), else None."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def cmd_dispatch(args: argparse.Namespace) -> int:
    config = dispatch_config_from_args(args)
    with open_store(args.db) as store, asyncio.Runner(loop_factory=fast_loop_factory()) as run:
        metrics = run.run(_dispatch(store, config))
    print(orjson.dumps({"stopped": True, **metrics}).decode(), file=sys.stderr)
    return 0


async def _dispatch(store: Any, config: DispatchConfig) -> dict[str, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with EventOrchestrator(store, config) as orchestrator:
            print(f"eventledger: dispatching as {orchestrator.owner}", file=sys.stderr, flush=True)
            await stop.wait()
        return orchestrator.metrics.as_dict()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _line(info: DeliveryInfo) -> str:
    error = info.last_error or ""
    return (
        f"{info.delivery_id}\t{info.state.value}\tattempts={info.attempts}"
        f"\tentity={info.entity_key}#{info.sequence}\t{error}"
    )


def cmd_dlq_list(args: argparse.Namespace) -> int:
    state = None if args.state.lower() == "all" else check_state(args.state)

    async def go(store: Any) -> list[DeliveryInfo]:
        async with store.deliveries() as repo:
            rows: list[DeliveryInfo] = await repo.list_deliveries(
                state, limit=args.limit, offset=args.offset
            )
            return rows

    with open_store(args.db) as store:
        rows = asyncio.run(go(store))
    if args.json:
        sys.stdout.write(
            orjson.dumps(
                {"state": state, "deliveries": [r.to_dict() for r in rows]},
                option=orjson.OPT_INDENT_2,
            ).decode()
            + "\n"
        )
    else:
        for info in rows:
            print(_line(info))
        if not rows:
            print(f"no deliveries in state {state or 'any'}", file=sys.stderr)
    return 0


def _operate(args: argparse.Namespace, action: str) -> int:
    async def go(store: Any) -> DeliveryInfo:
        async with store.deliveries() as repo:
            if action == "retry":
                info: DeliveryInfo = await repo.retry_dead_letter(args.delivery_id)
            else:
                info = await repo.skip_dead_letter(args.delivery_id)
            return info

    with open_store(args.db) as store:
        info = asyncio.run(go(store))
    print(_line(info))
    return 0


def cmd_dlq_retry(args: argparse.Namespace) -> int:
    return _operate(args, "retry")


def cmd_dlq_skip(args: argparse.Namespace) -> int:
    return _operate(args, "skip")


__all__ = ["DeliveryState", "register"]
