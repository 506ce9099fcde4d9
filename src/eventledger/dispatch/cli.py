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

_DEFAULTS = DispatchConfig()


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the dispatcher's commands to the ``eventledger`` parser."""
    p = sub.add_parser(
        "dispatch",
        parents=[common],
        help="deliver pending webhooks until SIGTERM/SIGINT, then drain and exit",
    )
    p.add_argument("--workers", type=int, default=_DEFAULTS.workers, help="worker tasks")
    p.add_argument(
        "--max-per-host",
        type=int,
        default=_DEFAULTS.max_per_host,
        help="requests in flight to one host at most",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=_DEFAULTS.request_timeout,
        help="total seconds per request",
    )
    p.add_argument(
        "--lease",
        type=float,
        default=_DEFAULTS.lease_duration,
        help="seconds a claimed delivery stays ours before another process may reclaim it",
    )
    p.add_argument(
        "--allow-private-targets",
        action="store_true",
        help="allow loopback/private/link-local targets (local testing only)",
    )
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
    try:
        config = DispatchConfig(
            workers=args.workers,
            max_per_host=args.max_per_host,
            request_timeout=args.request_timeout,
            lease_duration=args.lease,
            allow_private_targets=args.allow_private_targets,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
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
