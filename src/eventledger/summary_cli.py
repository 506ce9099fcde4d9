"""``eventledger verify [USER_ID]``: check the maintained summaries against the events."""

from __future__ import annotations

import argparse
import sys

import orjson
from rich.console import Console
from rich.table import Table

from .errors import NotFoundError
from .ledger import Ledger

# Exit status when verification finds a mismatch (1 is an error, 2 a usage error).
EXIT_MISMATCH = 3


def cmd_verify(args: argparse.Namespace) -> int:
    with Ledger(args.db) as ledger:
        result = ledger.verify(args.user_id)
    if args.user_id is not None and result.users_checked == 0 and result.ok:
        raise NotFoundError(f"unknown user {args.user_id!r}: no event of this user was seen")
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        console = Console()
        if result.ok:
            console.print(
                f"verified {result.users_checked} user(s): the maintained summaries match "
                "the stored events"
            )
        else:
            table = Table(title=f"{len(result.mismatches)} mismatch(es)")
            for column in ("user_id", "field", "maintained", "recomputed"):
                table.add_column(column)
            for m in result.mismatches:
                table.add_row(m.user_id, m.field, str(m.maintained), str(m.recomputed))
            console.print(table)
            console.print(f"{result.users_checked} user(s) checked")
    return 0 if result.ok else EXIT_MISMATCH


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``verify`` command to the ``eventledger`` parser."""
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="recompute summaries from the stored events and report any mismatch",
        description="Recompute every user's (or one user's) counts, applied count, total value "
        "and first_seen_at from the stored events in SQL and compare them with the maintained "
        f"aggregate. Exit status {EXIT_MISMATCH} when anything differs.",
    )
    p.add_argument("user_id", metavar="USER_ID", nargs="?", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_verify)
