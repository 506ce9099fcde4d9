#!/usr/bin/env bash
# The whole test suite (unit, integration on SQLite and PostgreSQL, acceptance via the CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -p no:cacheprovider "$@"
