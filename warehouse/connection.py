"""Short-lived DuckDB connections with lock retry.

DuckDB allows one writing process, so every write opens the file, writes one
transaction and closes it; readers (the duckdb CLI, ``tr111 query``) get in
between. A writer that meets a lock waits and retries instead of failing.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from tr111.errors import ConfigError, TransientError

_MIGRATED: set[str] = set()


def first(cursor: duckdb.DuckDBPyConnection) -> tuple | None:
    """The first row, with the result consumed (DuckDB 2 refuses new work on an open result)."""
    found = cursor.fetchall()
    return found[0] if found else None


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


def _open(path: Path, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise ConfigError(f"cannot open warehouse {path}: {str(exc).splitlines()[0]}") from None
            if time.monotonic() >= deadline:
                raise TransientError(f"warehouse {path} stayed locked for {timeout_s:g} s") from None
        except duckdb.Error as exc:
            raise ConfigError(f"cannot open warehouse {path}: {str(exc).splitlines()[0]}") from None
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.25)


@contextmanager
def connect(path: str | Path, *, timeout_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writable connection, migrated to the current schema, closed on exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, False, timeout_s)
    try:
        key = str(path.resolve())
        if key not in _MIGRATED:
            from warehouse.migrations import migrate

            migrate(con)
            _MIGRATED.add(key)
        yield con
    finally:
        con.close()


@contextmanager
def open_read_only(path: str | Path, *, timeout_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection; the file must exist (a reader never creates one)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"warehouse not found: {path}")
    con = _open(path, True, timeout_s)
    try:
        yield con
    finally:
        con.close()
