"""A Prefect SQLite database already migrated to the installed Prefect's schema.

Every throw-away Prefect server the suite starts (the test harness of each xdist worker, the
server ``tr111 sweep`` starts for itself, the screenshot script's) would otherwise run Prefect's
~200 migrations on an empty file: ~13 s of CPU each on the 2-core CI machine. The migrated file
is built once (under a file lock, so xdist workers build it once between them), kept in the
user's cache folder keyed by the Prefect version, and copied wherever a server needs a fresh
database. A server started on a copy still runs its start-up migration check, which finds
nothing to do. Anything that goes wrong here only costs the time: callers fall back to an
empty database.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tr111-tests"


def _is_migrated(path: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as con:
            return bool(con.execute("SELECT version_num FROM alembic_version").fetchall())
    except sqlite3.Error:
        return False


def _build(target: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="tr111-prefect-template-"))
    try:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_PROFILE")}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                       env=env, check=True, capture_output=True, timeout=600)
        built = home / "prefect.db"
        if not _is_migrated(built):
            raise RuntimeError(f"{built} has no alembic_version after the upgrade")
        partial = target.with_suffix(".partial")
        shutil.copyfile(built, partial)
        os.replace(partial, target)  # readers never see a half-copied file
    finally:
        shutil.rmtree(home, ignore_errors=True)


def template() -> Path | None:
    """The migrated database for the installed Prefect, built on first use; None if it cannot be."""
    import prefect

    folder = _cache_dir()
    target = folder / f"prefect-{prefect.__version__}.db"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and reuse its file
            if not _is_migrated(target):
                _build(target)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        print(f"tests: no migrated Prefect database ({exc}); servers will migrate their own",
              file=sys.stderr)
        return None
    return target


def seed(database: Path) -> bool:
    """Copy the migrated database to ``database`` (a server's fresh file); False if there is none."""
    source = template()
    if source is None or database.exists():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, database)
    return True
