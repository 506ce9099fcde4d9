"""The ``eventledger`` command line: parses arguments, calls the library, renders output."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import IO, Any

import orjson
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import EventledgerError, InputError, NotFoundError
from .inputs import iter_events
from .ledger import Ledger
from .model import Outcome, Report
from .store import open_store, redact_url, resolve_url

PROGRESS_MIN_BYTES = 4 << 20

Handler = Callable[[argparse.Namespace], int]


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _ledger(args: argparse.Namespace) -> Ledger:
    return Ledger(args.db)


# -- process ---------------------------------------------------------------------------------
class _CountingReader:
    """A binary stream wrapper that tells a callback how many bytes were read."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.on_read(len(data))
        return data


def _render_report(report: Report, console: Console) -> None:
    table = Table(title=f"batch {report.batch_id}", show_header=True)
    table.add_column("outcome")
    table.add_column("events", justify="right")
    table.add_row("total", str(report.total))
    table.add_row("applied", str(report.applied))
    table.add_row("duplicates", str(report.duplicates))
    table.add_row("rejected", str(report.rejected))
    for reason, n in sorted(report.rejected_by_reason.items()):
        table.add_row(f"  {reason}", str(n))
    table.add_row("balanced", "yes" if report.balanced else "NO")
    console.print(table)


def cmd_process(args: argparse.Namespace) -> int:
    console = Console(stderr=args.json)
    with ExitStack() as stack:
        if args.file == "-":
            raw: IO[bytes] = sys.stdin.buffer
            size = 0
        else:
            try:
                raw = stack.enter_context(open(args.file, "rb"))  # noqa: SIM115
                size = os.fstat(raw.fileno()).st_size
            except OSError as exc:
                raise InputError(f"cannot read {args.file}: {exc.strerror}") from exc
        sink = None
        if args.outcomes:
            try:
                out = stack.enter_context(open(args.outcomes, "wb"))  # noqa: SIM115
            except OSError as exc:
                raise InputError(f"cannot write {args.outcomes}: {exc.strerror}") from exc

            def sink(outcome: Outcome) -> None:
                out.write(orjson.dumps(outcome.to_dict()) + b"\n")

        ledger = stack.enter_context(_ledger(args))
        show_progress = (
            size >= PROGRESS_MIN_BYTES
            and not args.no_progress
            and (sys.stderr.isatty() or args.progress)
        )
        stream: IO[bytes] | _CountingReader = raw
        if show_progress:
            from rich.progress import (
                BarColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            progress = stack.enter_context(
                Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    "[progress.percentage]{task.percentage:>3.0f}%",
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                )
            )
            task = progress.add_task("processing", total=size)
            stream = _CountingReader(raw, lambda n: progress.advance(task, n))
        # Without --outcomes the report keeps its outcomes only for --json output.
        keep = args.json and not args.outcomes
        report = ledger.process(
            iter_events(stream),  # type: ignore[arg-type]
            outcome_sink=sink,
            keep_outcomes=keep,
        )
    if args.json:
        _print_json(report.to_dict() if keep else report.summary_dict())
    else:
        _render_report(report, console)
    return 0 if report.balanced else 3


# -- queries -----------------------------------------------------------------------------
def cmd_user(args: argparse.Namespace) -> int:
    with _ledger(args) as ledger:
        activity = ledger.activity(args.user_id)
    if activity is None:
        raise NotFoundError(f"unknown user {args.user_id!r}: no event of this user was seen")
    if args.json:
        _print_json(activity)
        return 0
    table = Table(title=f"user {activity['user_id']}", show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    for key in ("last_seen_at", "first_seen_at", "applied", "total_value"):
        table.add_row(key, str(activity[key]))
    for event_type, n in activity["counts"].items():
        table.add_row(f"count {event_type}", str(n))
    Console().print(table)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    if args.source:
        from .summary import ExistingTable

        with ExistingTable(args.source, table=args.table) as existing:
            summary = existing.fetch_user_activity_summary(args.user_id)
    else:
        with _ledger(args) as ledger:
            summary = ledger.fetch_user_activity_summary(args.user_id)
    if args.json:
        _print_json(summary)
    else:
        table = Table(title=f"summary of user {args.user_id}", show_header=False)
        table.add_column("field")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            table.add_row(key, str(value))
        Console().print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    with _ledger(args) as ledger:
        _print_json(ledger.report(args.batch_id))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    with open_store(args.db, upgrade=False) as store:
        before = store.schema_version()
        after = store.upgrade()
    print(f"schema of {redact_url(resolve_url(args.db))}: v{before} -> v{after}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# -- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=None,
        help="database URL: sqlite:///PATH or postgresql://... "
        "(default: $EVENTLEDGER_DB, else sqlite:///eventledger.db)",
    )
    parser = argparse.ArgumentParser(
        prog="eventledger",
        description="Apply untrusted user-activity events exactly once, prove it in an audit "
        "report, serve summaries and deliver events to webhooks in order.",
    )
    parser.add_argument("--version", action="version", version=f"eventledger {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "process", parents=[common], help="process a file of events (NDJSON or a JSON array)"
    )
    p.add_argument("file", metavar="FILE|-", help="input file, or - for standard input")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--outcomes", metavar="FILE.ndjson", help="write every event's outcome here")
    p.add_argument(
        "--progress", action="store_true", help="show a progress bar even when not on a terminal"
    )
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(handler=cmd_process)

    p = sub.add_parser("user", parents=[common], help="show a user's activity")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_user)

    p = sub.add_parser(
        "summary",
        parents=[common],
        help="a user's activity summary (click, view, purchase, total_value)",
    )
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--source",
        metavar="DSN",
        help="read an existing legacy events table in this PostgreSQL database (read-only)",
    )
    p.add_argument("--table", default="events", help="the legacy table's name (with --source)")
    p.set_defaults(handler=cmd_summary)

    p = sub.add_parser("report", parents=[common], help="print a stored batch report as JSON")
    p.add_argument("batch_id", metavar="BATCH_ID")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    pu = dbsub.add_parser("upgrade", parents=[common], help="create or migrate the schema")
    pu.set_defaults(handler=cmd_db_upgrade)

    p = sub.add_parser("demo", parents=[common], help="run the whole pipeline on generated events")
    p.set_defaults(handler=cmd_demo)

    for register in _extensions():
        register(sub, common)
    return parser


def _extensions() -> tuple[Callable[[Any, argparse.ArgumentParser], None], ...]:
    """Command groups that live beside their capability (verify, dispatch/dlq, serve/endpoints)."""
    from .api.cli import register as register_api
    from .dispatch.cli import register as register_dispatch
    from .summary_cli import register as register_summary

    return (register_summary, register_dispatch, register_api)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except EventledgerError as exc:
        print(f"eventledger: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("eventledger: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
