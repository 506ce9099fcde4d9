"""The legacy summary logic of seed 001: the parity oracle and the benchmarks' baseline.

Not used by the product. :func:`legacy_fetch_user_activity_summary` is the "before" code of
SPEC §3, kept exactly as it behaves so that tests can prove existing-table mode
(:class:`eventledger.summary.ExistingTable`) gives identical answers and benchmarks can
measure what was replaced: fetch ``id, type, metadata`` of the user, keep the first row of
each ``id`` (an O(N) Python set), count ``click``/``view``/``purchase`` and, for purchases,
add ``float(metadata["price"])`` when the price is present, truthy and convertible.

Decisions where the seed's code is silent (it would crash or is ambiguous):

* ``metadata`` that is not a JSON object (NULL, an array, a string...) has no price.
* "Convertible" means ``float(price)`` returns: ``TypeError``, ``ValueError`` and
  ``OverflowError`` (an integer beyond the float range) all mean "add nothing".
* The metadata is read through psycopg's default JSONB loader (``json.loads`` of the text
  PostgreSQL sends), so a number is a Python ``int`` when PostgreSQL prints it without a
  decimal point and a ``float`` otherwise -- exactly what the legacy code saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SUMMARY_TYPES = ("click", "view", "purchase")


def legacy_price(metadata: Any) -> float | None:
    """What the legacy code adds to ``total_value`` for a purchase, or None for nothing."""
    if not isinstance(metadata, dict) or "price" not in metadata:
        return None
    price = metadata["price"]
    if not price:
        return None
    try:
        return float(price)
    except (TypeError, ValueError, OverflowError):
        return None


def legacy_summary_from_rows(rows: Iterable[tuple[Any, str, Any]]) -> dict[str, Any]:
    """The legacy aggregation over ``(id, type, metadata)`` rows, in the order given."""
    summary: dict[str, Any] = {"click": 0, "view": 0, "purchase": 0, "total_value": 0.0}
    seen: set[Any] = set()
    for event_id, event_type, metadata in rows:
        if event_id in seen:
            continue
        seen.add(event_id)
        if event_type in SUMMARY_TYPES:
            summary[event_type] += 1
        if event_type == "purchase":
            price = legacy_price(metadata)
            if price is not None:
                summary["total_value"] += price
    return summary


def legacy_fetch_user_activity_summary(
    conn: Any, user_id: int, table: str = "events"
) -> dict[str, Any]:
    """The seed's legacy function: fetch every row of the user, then aggregate in Python.

    ``conn`` is an open psycopg connection; ``table`` may be schema-qualified (``s.t``).
    """
    from psycopg import sql

    query = sql.SQL("SELECT id, type, metadata FROM {} WHERE user_id = %s").format(
        sql.Identifier(*table.split("."))
    )
    with conn.cursor() as cur:
        rows = cur.execute(query, (user_id,)).fetchall()
    return legacy_summary_from_rows(rows)
