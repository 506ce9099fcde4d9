"""eventledger: apply untrusted user-activity events exactly once and prove it.

The public API: :class:`Ledger` (process batches, query activity), the report model, the
store factory, and the error tree. The dispatcher lives in :mod:`eventledger.dispatch` and
the summary's existing-table mode in :mod:`eventledger.summary`.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    ConflictError,
    DispatchError,
    EventledgerError,
    InputError,
    NotFoundError,
    SchemaError,
    StoreError,
    TargetRefusedError,
)
from .ledger import Ledger
from .model import Outcome, OutcomeKind, RejectReason, Report
from .store import open_store

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConflictError",
    "DispatchError",
    "EventledgerError",
    "InputError",
    "Ledger",
    "NotFoundError",
    "Outcome",
    "OutcomeKind",
    "RejectReason",
    "Report",
    "SchemaError",
    "StoreError",
    "TargetRefusedError",
    "__version__",
    "open_store",
]
