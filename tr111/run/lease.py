"""One owner per sweep: a lease beside the warehouse, held by the process that runs it.

``<warehouse>.d/leases/<sweep_id>.lock`` is held with ``flock`` for as long as the sweep
runs, so the kernel releases it the moment its owner dies (kill -9 included);
``<sweep_id>.json`` beside it names the owner (host, pid, start, heartbeat), rewritten
atomically. A second process asking for the same id finds the lock taken and refuses,
naming the owner; a lease whose owner is gone is taken over, and a sweep still marked
``running`` without a live owner is reported as ``interrupted``. The JSON heartbeat
covers a shared folder where flock is unreliable (NFS): an owner on another host with
a fresh heartbeat is still refused.

The lock files are never deleted: deleting a flocked file lets two processes lock two
different inodes under one name.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tr111.errors import StorageError, SweepLeasedError
from tr111.paths import sidecar_dir

HEARTBEAT_S = 5.0
STALE_AFTER_S = 3 * HEARTBEAT_S


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    released_at: str | None = None
    outcome: str | None = None

    def describe(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        beat = (now - datetime.fromisoformat(self.heartbeat_at)).total_seconds()
        return (f"pid {self.pid} on {self.host}, since {self.started_at[:19].replace('T', ' ')} UTC"
                f" (heartbeat {beat:.0f} s ago)")


def leases_dir(warehouse_path: Path) -> Path:
    return sidecar_dir(Path(warehouse_path)) / "leases"


def read_owner(warehouse_path: Path, sweep_id: str) -> Owner | None:
    try:
        data = json.loads((leases_dir(warehouse_path) / f"{sweep_id}.json").read_text(encoding="utf-8"))
        return Owner(**data)
    except (OSError, ValueError, TypeError):
        return None


def is_held(warehouse_path: Path, sweep_id: str) -> bool:
    """Does a live process hold the sweep's lease? (A shared flock probe; never blocks.)"""
    lock = leases_dir(warehouse_path) / f"{sweep_id}.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock, if it got one
    owner = read_owner(warehouse_path, sweep_id)  # free here; maybe held on another host
    return owner is not None and _remote_and_fresh(owner)


def _remote_and_fresh(owner: Owner) -> bool:
    if owner.released_at or owner.host == socket.gethostname():
        return False
    age = (datetime.now(UTC) - datetime.fromisoformat(owner.heartbeat_at)).total_seconds()
    return age < STALE_AFTER_S


def effective_status(warehouse_path: Path, sweep_id: str, recorded: str | None) -> str | None:
    """``running`` only while a live owner holds the lease; otherwise the sweep was interrupted
    (its process was killed, or the machine went down) and a rerun resumes it."""
    if recorded == "running" and not is_held(warehouse_path, sweep_id):
        return "interrupted"
    return recorded


def refuse_if_held(warehouse_path: Path, sweep_id: str) -> None:
    """A quick check before anything starts; the lease itself is taken in tr111.run.context."""
    if is_held(warehouse_path, sweep_id):
        owner = read_owner(warehouse_path, sweep_id)
        raise SweepLeasedError(_refusal_text(sweep_id, owner))


def _refusal_text(sweep_id: str, owner: Owner | None) -> str:
    who = owner.describe() if owner else "another process"
    return (f"sweep {sweep_id!r} is already running ({who}); wait for it to end or stop it,"
            f" then rerun with --sweep-id {sweep_id} to resume")


class SweepLease:
    """Held while a sweep runs (``with SweepLease(path, id) as lease``); see the module doc."""

    def __init__(self, warehouse_path: Path, sweep_id: str, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.warehouse_path = Path(warehouse_path)
        self.folder = leases_dir(warehouse_path)
        self.sweep_id = sweep_id
        self.heartbeat_s = heartbeat_s
        self.previous: Owner | None = None  # the owner this lease took over from, if any
        self.outcome: str | None = None  # written on release: completed, interrupted, ...
        self._fd: int | None = None
        self._owner: Owner | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def owner(self) -> Owner | None:
        return self._owner

    def __enter__(self) -> "SweepLease":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / f"{self.sweep_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the sweep lease in {self.folder}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refusal(read_owner(self.warehouse_path, self.sweep_id)) from None
        previous = read_owner(self.warehouse_path, self.sweep_id)
        if previous is not None and _remote_and_fresh(previous):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise self._refusal(previous)
        self._fd = fd
        self.previous = previous if previous is not None and previous.released_at is None else None
        now = datetime.now(UTC).isoformat()
        self._owner = Owner(host=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now)
        self._write(self._owner)
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{self.sweep_id}", daemon=True)
        self._beat.start()
        return self

    def _refusal(self, owner: Owner | None) -> SweepLeasedError:
        return SweepLeasedError(_refusal_text(self.sweep_id, owner))

    def _write(self, owner: Owner) -> None:
        target = self.folder / f"{self.sweep_id}.json"
        tmp = self.folder / f".{self.sweep_id}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(owner.__dict__, fh)
        os.replace(tmp, target)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            owner = self._owner
            if owner is None:
                return
            self._owner = Owner(**{**owner.__dict__, "heartbeat_at": datetime.now(UTC).isoformat()})
            try:
                self._write(self._owner)
            except OSError:
                pass  # a full disk must not kill the sweep over a heartbeat; flock still holds

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=1.0)
        if self._owner is not None:
            released = Owner(**{**self._owner.__dict__, "released_at": datetime.now(UTC).isoformat(),
                                "outcome": self.outcome})
            try:
                self._write(released)
            except OSError:
                pass
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def reconcile(warehouse_path: Path, *, skip: str | None = None, timeout_s: float = 5.0) -> list[str]:
    """Sweeps recorded ``running`` whose owner is gone: merge the shards they left and mark
    them ``interrupted`` (a rerun with their id resumes them). Returns their ids."""
    from tr111.warehouse import connect, shards, writer
    from tr111.warehouse.reader import running_sweeps

    warehouse_path = Path(warehouse_path)
    if not warehouse_path.exists():
        return []
    with connect(warehouse_path, timeout_s=timeout_s) as con:
        orphaned = [s for s in running_sweeps(con) if s != skip and not is_held(warehouse_path, s)]
    for sweep_id in orphaned:
        shards.merge_pending(warehouse_path, sweep_id, timeout_s=timeout_s)
    writer.mark_interrupted(warehouse_path, orphaned, "its process ended without finishing;"
                            " rerun with its --sweep-id to resume")
    return orphaned
