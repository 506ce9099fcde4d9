"""The legacy summary logic (the parity oracle), on rows in memory."""

from __future__ import annotations

import math
from typing import Any

import pytest

from eventledger.legacy import legacy_price, legacy_summary_from_rows

OVERFLOW_INT = 2**1024 - 2**970  # the smallest int that float() refuses


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"price": 12.5}, 12.5),
        ({"price": 3}, 3.0),
        ({"price": "12.5"}, 12.5),
        ({"price": " 12.5 "}, 12.5),
        ({"price": "1e3"}, 1000.0),
        ({"price": "-3"}, -3.0),
        ({"price": "+4"}, 4.0),
        ({"price": "1_000"}, 1000.0),
        ({"price": "\u0661\u0662"}, 12.0),  # Arabic-Indic digits: float() accepts them
        ({"price": "\u00a07\u3000"}, 7.0),  # Unicode white space is stripped
        ({"price": "\x1c7"}, None),  # ...but ASCII information separators are not
        ({"price": "inf"}, math.inf),
        ({"price": "-Infinity"}, -math.inf),
        ({"price": "1e400"}, math.inf),  # a string past the float range is inf...
        ({"price": OVERFLOW_INT}, None),  # ...an int past it raises OverflowError: nothing
        ({"price": OVERFLOW_INT - 1}, 1.7976931348623157e308),
        ({"price": True}, 1.0),  # truthy and float(True) == 1.0
        ({"price": False}, None),
        ({"price": 0}, None),
        ({"price": ""}, None),
        ({"price": None}, None),
        ({"price": "N/A"}, None),
        ({"price": "0x10"}, None),
        ({"price": "1__000"}, None),
        ({"price": [1]}, None),
        ({"price": {"amount": 1}}, None),
        ({"amount": {"price": 5}}, None),  # only the top-level key counts
        ({}, None),
        (None, None),  # NULL metadata
        ([{"price": 5}], None),  # metadata that is not an object has no price
        ("price", None),
    ],
)
def test_legacy_price(metadata: Any, expected: float | None) -> None:
    assert legacy_price(metadata) == expected


def test_nan_string_is_convertible() -> None:
    price = legacy_price({"price": "nan"})
    assert price is not None and math.isnan(price)


def test_summary_counts_the_three_types_and_sums_purchase_prices() -> None:
    rows = [
        (1, "click", {}),
        (2, "view", None),
        (3, "purchase", {"price": "10.5", "items": [{"price": 99}]}),
        (4, "purchase", {"price": "garbage"}),
        (5, "signup", {"price": 1000}),  # not a summary type, and not a purchase
        (6, "purchase", {"price": 2}),
    ]
    assert legacy_summary_from_rows(rows) == {
        "click": 1,
        "view": 1,
        "purchase": 3,
        "total_value": 12.5,
    }


def test_summary_keeps_the_first_row_of_each_id() -> None:
    rows = [
        (1, "purchase", {"price": 5}),
        (1, "click", {}),
        (1, "purchase", {"price": 7}),
        (2, "view", {}),
    ]
    assert legacy_summary_from_rows(rows) == {
        "click": 0,
        "view": 1,
        "purchase": 1,
        "total_value": 5.0,
    }


def test_empty_user_gets_zeros() -> None:
    result = legacy_summary_from_rows([])
    assert result == {"click": 0, "view": 0, "purchase": 0, "total_value": 0.0}
    assert isinstance(result["total_value"], float)
