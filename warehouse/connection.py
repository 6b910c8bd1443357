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
from tr111.warehouse.migrations import migrate

# New warehouse files are written in a storage format older DuckDB releases can read, so the
# duckdb CLI (the duckdb-cli package trails the Python package: 1.5 cannot open a file in
# DuckDB 2's default format) and other tools can read the warehouse. An existing file keeps
# the format it was created with.
STORAGE_COMPATIBILITY = "v1.0.0"


def first(cursor: duckdb.DuckDBPyConnection) -> tuple | None:
    """The first row, with the result consumed (DuckDB 2 refuses new work on an open result)."""
    found = cursor.fetchall()
    return found[0] if found else None


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


def _is_in_process_conflict(exc: Exception) -> bool:
    """This process already has the file open read-only while we want to write (or the
    reverse): DuckDB refuses the second connection until the first one closes."""
    return "different configuration than existing connections" in str(exc)


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    if read_only or path.exists():
        return duckdb.connect(str(path), read_only=read_only)
    try:
        return duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_COMPATIBILITY})
    except duckdb.IOException:  # a lock: _open retries
        raise
    except duckdb.Error:
        return duckdb.connect(str(path))  # a DuckDB that does not know the setting or the version


def _open(path: Path, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            return _connect(path, read_only)
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise ConfigError(f"cannot open warehouse {path}: {str(exc).splitlines()[0]}") from None
            if time.monotonic() >= deadline:
                raise TransientError(f"warehouse {path} stayed locked for {timeout_s:g} s") from None
        except duckdb.Error as exc:
            if not _is_in_process_conflict(exc):
                raise ConfigError(f"cannot open warehouse {path}: {str(exc).splitlines()[0]}") from None
            if time.monotonic() >= deadline:
                raise TransientError(f"warehouse {path} stayed open in this process with another mode"
                                     f" for {timeout_s:g} s") from None
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.25)


@contextmanager
def connect(path: str | Path, *, timeout_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writable connection, migrated to the current schema, closed on exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, False, timeout_s)
    try:
        migrate(con)  # two tiny statements when nothing is pending: no per-process cache
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
