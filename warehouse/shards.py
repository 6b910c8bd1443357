"""Finished measurements are durable before the warehouse sees them: per-run Parquet shards.

A run's rows (its calls, the run, ingest problems), a failed call attempt, or what the server
said about a config are written as one *shard*: a folder of Parquet files, one per table,
plus ``manifest.json``, written under a temporary name, fsynced and renamed into
``<warehouse>.d/shards/<sweep_id>/``. Only then does the single writer merge it: pending
shards in name (= creation) order, each in one transaction of ``INSERT OR REPLACE`` by
primary key plus a ``_merged_shards`` row, after which the folder is removed. A merge
repeated after a crash therefore changes nothing, and a lock held by another process only
delays the merge: the sweep goes on, and the next merge (after the next run, at the end of
the sweep, or when a sweep is resumed) picks the shard up. The fleet feature will move the
same folders between hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tr111.errors import ConfigError, StorageError, WarehouseLockedError
from tr111.paths import sidecar_dir
from tr111.warehouse.connection import connect, storage_error

REPLACE_TABLES = ("llm_calls", "runs", "ingest_problems", "fleet_hosts")  # merged by primary key
CONFIG_INFO = "config_info"  # merged as an UPDATE of configs: what /api/show and /api/ps said
CONFIG_INFO_SCHEMA = pa.schema([
    ("sweep_id", pa.string()), ("config_id", pa.string()), ("show_json", pa.string()),
    ("ps_json", pa.string()), ("size_vram", pa.int64()), ("context_length", pa.int64())])
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class MergeOutcome:
    merged: int  # shards merged now
    pending: int  # shards still waiting (the warehouse was locked)
    holder: str | None = None  # who held the lock, when one stopped the merge


def shards_dir(warehouse_path: Path, sweep_id: str | None = None, root: Path | None = None) -> Path:
    """``root`` (a fleet's shared folder) or ``<warehouse>.d/shards``, per sweep."""
    base = Path(root) if root is not None else sidecar_dir(Path(warehouse_path)) / "shards"
    return base / sweep_id if sweep_id else base


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(warehouse_path: Path, sweep_id: str, tables: dict[str, pa.Table], kind: str,
                root: Path | None = None) -> Path:
    """Write the tables as one shard, atomically (temp folder, fsync, rename); its path."""
    folder = shards_dir(warehouse_path, sweep_id, root)
    name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{kind}"
    tmp = folder / f"{TMP_PREFIX}{name}"
    try:
        tmp.mkdir(parents=True)
        counts = {}
        for table, data in tables.items():
            if data.num_rows == 0:
                continue
            target = tmp / f"{table}.parquet"
            pq.write_table(data, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            counts[table] = data.num_rows
        manifest = {"sweep_id": sweep_id, "kind": kind, "rows": counts, "pid": os.getpid(),
                    "written_at": datetime.now(UTC).isoformat()}
        with open(tmp / "manifest.json", "w", encoding="utf-8") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = folder / name
        os.rename(tmp, final)
        _fsync_dir(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise (storage_error(exc, folder) or StorageError(f"cannot write shard in {folder}: {exc}")) from None
    return final


def pending_shards(warehouse_path: Path, sweep_id: str | None = None, root: Path | None = None) -> list[Path]:
    """Shards written but not merged yet, oldest first (all sweeps when ``sweep_id`` is None)."""
    base = shards_dir(warehouse_path, None, root)
    if not base.is_dir():
        return []
    sweeps = [base / sweep_id] if sweep_id else [p for p in base.iterdir() if p.is_dir()]
    found = [s for d in sweeps if d.is_dir() for s in d.iterdir()
             if s.is_dir() and not s.name.startswith(TMP_PREFIX) and (s / "manifest.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def _merge_one(con: duckdb.DuckDBPyConnection, shard: Path) -> None:
    manifest = json.loads((shard / "manifest.json").read_text(encoding="utf-8"))
    con.execute("BEGIN TRANSACTION")
    try:
        if con.execute("SELECT 1 FROM _merged_shards WHERE name = ?", [shard.name]).fetchall():
            con.execute("COMMIT")
            return  # merged before a crash removed the folder: idempotent
        for table in REPLACE_TABLES:
            part = shard / f"{table}.parquet"
            if part.is_file():
                con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM read_parquet(?)",
                            [str(part)])
        part = shard / f"{CONFIG_INFO}.parquet"
        if part.is_file():
            con.execute(
                "UPDATE configs SET show_json = i.show_json, ps_json = i.ps_json, "
                "size_vram = i.size_vram, context_length = i.context_length "
                "FROM read_parquet(?) AS i "
                "WHERE configs.sweep_id = i.sweep_id AND configs.config_id = i.config_id", [str(part)])
        con.execute("INSERT INTO _merged_shards VALUES (?, ?, ?, ?, ?)",
                    [shard.name, manifest.get("sweep_id"), manifest.get("kind"),
                     sum(manifest.get("rows", {}).values()), datetime.now(UTC)])
        con.execute("COMMIT")
    except Exception:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # a failed COMMIT leaves no transaction: keep the real cause
        raise


def merge_pending(warehouse_path: Path, sweep_id: str | None = None, *, timeout_s: float = 1.0,
                  on_lock=None, root: Path | None = None) -> MergeOutcome:
    """Merge every pending shard (of one sweep, or all; from ``root`` or beside the warehouse);
    a lock past ``timeout_s`` leaves them pending and names its holder instead of failing."""
    todo = pending_shards(warehouse_path, sweep_id, root)
    if not todo:
        return MergeOutcome(0, 0)
    merged = 0
    try:
        with connect(warehouse_path, timeout_s=timeout_s, on_lock=on_lock) as con:
            for shard in todo:
                try:
                    _merge_one(con, shard)
                except duckdb.Error as exc:
                    raise (storage_error(exc, warehouse_path) or ConfigError(
                        f"cannot merge shard {shard}: {str(exc).splitlines()[0]}")) from None
                shutil.rmtree(shard, ignore_errors=True)
                merged += 1
    except WarehouseLockedError as exc:
        return MergeOutcome(merged, len(todo) - merged, exc.holder or "another process")
    return MergeOutcome(merged, 0)
