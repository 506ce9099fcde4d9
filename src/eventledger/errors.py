"""The exception tree of eventledger.

Every error eventledger raises on purpose derives from one root, so callers can catch
``EventledgerError`` and the CLI can turn it into one clear line and an exit code::

    EventledgerError
    ├── ConfigError          bad configuration (URL, option, environment variable)
    ├── InputError           an input file or body that cannot be read at all
    ├── StoreError           the database failed or is unusable (driver errors wrapped)
    │   └── SchemaError      the schema is missing, newer than this code, or inconsistent
    ├── NotFoundError        a user, report, endpoint or delivery that does not exist
    ├── ConflictError        a request that contradicts stored state (e.g. a reused sequence)
    └── DispatchError        the dispatcher cannot do what was asked
        └── TargetRefusedError  a webhook target that is not allowed (scheme, private address)
"""

from __future__ import annotations


class EventledgerError(Exception):
    """Root of every error raised by eventledger on purpose."""


class ConfigError(EventledgerError):
    """A configuration value (URL, option, environment variable) is invalid."""


class InputError(EventledgerError):
    """An input (file, stream, body) cannot be read at all."""


class StoreError(EventledgerError):
    """The database failed or cannot be used; the driver's error is the ``__cause__``."""


class SchemaError(StoreError):
    """The schema is missing, newer than this code, or inconsistent."""


class NotFoundError(EventledgerError):
    """The requested user, report, endpoint or delivery does not exist."""


class ConflictError(EventledgerError):
    """The request contradicts state already stored."""


class DispatchError(EventledgerError):
    """The dispatcher cannot do what was asked."""


class TargetRefusedError(DispatchError):
    """A webhook target URL is refused (scheme, or a private address not allowed)."""
