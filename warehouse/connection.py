"""Short-lived DuckDB connections with lock retry, and the file system's faults named.

DuckDB allows one writing process, so every write opens the file, writes one
transaction and closes it; readers (the duckdb CLI, ``tr111 query``) get in
between. A writer that meets a lock waits and retries instead of failing, and
names the process that holds it (DuckDB's message carries its PID). Disk full,
a read-only directory and a corrupt file become one StorageError line naming the
cause and the path, never a DuckDB traceback.
"""

from __future__ import annotations

import errno
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from tr111.errors import ConfigError, StorageError, TransientError, WarehouseLockedError
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


STORAGE_MARKS = {"no space left on device": "disk full", "read-only file system": "read-only file system",
                 "permission denied": "permission denied", "corrupt": "corrupt file",
                 "not a valid duckdb database": "not a DuckDB file",
                 "disk quota exceeded": "disk quota exceeded"}
STORAGE_ERRNOS = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
                  errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded",
                  errno.ENOTDIR: "not a directory", errno.EPERM: "permission denied"}


def storage_error(exc: BaseException, path: Path | str) -> StorageError | None:
    """The one-line StorageError for a file-system fault or a corrupt file, else None.

    DuckDB buries the cause (a failed commit on a full disk ends in "cannot rollback - no
    transaction is active"), so the first line naming it is kept, with the path.
    """
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        where = exc.filename or path
        return StorageError(f"{STORAGE_ERRNOS[exc.errno]}: cannot write {where} ({exc.strerror})")
    text = str(exc)
    for mark, cause in STORAGE_MARKS.items():
        if mark in text.lower():
            line = next((ln for ln in text.splitlines() if mark in ln.lower()), text.splitlines()[0])
            return StorageError(f"{cause}: warehouse {path}: {line.strip()}")
    return None


def lock_holder(exc: BaseException) -> str | None:
    """'PID 123 (duckdb -readonly wh.duckdb)' from DuckDB's lock message, when it names one."""
    found = re.search(r"\(PID (\d+)\)", str(exc))
    if not found:
        return None
    pid = int(found.group(1))
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        command = ""
    if len(command) > 80:
        command = command[:77] + "..."
    return f"PID {pid} ({command})" if command else f"PID {pid}"


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


def _open(path: Path, read_only: bool, timeout_s: float, on_lock=None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    told = False
    while True:
        try:
            return _connect(path, read_only)
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise (storage_error(exc, path) or ConfigError(
                    f"cannot open warehouse {path}: {str(exc).splitlines()[0]}")) from None
            holder = lock_holder(exc)
            if on_lock is not None and not told:
                on_lock(holder)  # once: the caller tells the user who holds the file
                told = True
            if time.monotonic() >= deadline:
                by = f" by {holder}" if holder else ""
                raise WarehouseLockedError(f"warehouse {path} stayed locked{by} for {timeout_s:g} s",
                                           holder=holder) from None
        except OSError as exc:
            raise (storage_error(exc, path) or ConfigError(f"cannot open warehouse {path}: {exc}")) from None
        except duckdb.Error as exc:
            if not _is_in_process_conflict(exc):
                raise (storage_error(exc, path) or ConfigError(
                    f"cannot open warehouse {path}: {str(exc).splitlines()[0]}")) from None
            if time.monotonic() >= deadline:
                raise TransientError(f"warehouse {path} stayed open in this process with another mode"
                                     f" for {timeout_s:g} s") from None
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.25)


@contextmanager
def connect(path: str | Path, *, timeout_s: float = 60.0,
            on_lock=None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writable connection, migrated to the current schema, closed on exit.

    ``on_lock(holder)`` is called once when another process's lock makes it wait.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (storage_error(exc, path.parent) or ConfigError(
            f"cannot create the warehouse folder {path.parent}: {exc.strerror}")) from None
    con = _open(path, False, timeout_s, on_lock)
    try:
        try:
            migrate(con)  # two tiny statements when nothing is pending: no per-process cache
        except duckdb.Error as exc:
            raise (storage_error(exc, path) or exc) from None
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
