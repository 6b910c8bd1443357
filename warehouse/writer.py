"""Every write tr111 makes: one short transaction per call, rows sent through pyarrow.

Measurements (call attempts, finished runs, what the server said about a config) are made
durable as a shard first (tr111.warehouse.shards) and merged right after when the warehouse
is free; a lock held by another process leaves them pending instead of losing them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from tr111.warehouse import shards
from tr111.warehouse.connection import connect, first, storage_error

TS = pa.timestamp("us", tz="UTC")
S, F, I, B = pa.string(), pa.float64(), pa.int64(), pa.bool_()

SCHEMAS: dict[str, pa.Schema] = {
    "sweeps": pa.schema([
        ("sweep_id", S), ("started_at", TS), ("finished_at", TS), ("status", S), ("model", S),
        ("ollama_url", S), ("server_version", S), ("matrix_json", S), ("host", S), ("engine", S),
        ("engine_model_file", S), ("tr111_version", S), ("environment_json", S),
        ("cache_bust", B), ("warmup", B), ("corpus_dir", S), ("note", S),
        ("order_seed", I), ("run_order", S), ("restarts_planned", I), ("owner_host", S),
        ("owner_pid", I), ("fleet_id", S), ("fleet_mode", S)]),
    "configs": pa.schema([
        ("sweep_id", S), ("config_id", S), ("num_gpu", I), ("num_ctx", I), ("temperature", F),
        ("options_json", S), ("is_baseline", B), ("show_json", S), ("ps_json", S),
        ("size_vram", I), ("context_length", I), ("position", I)]),
    "runs": pa.schema([
        ("sweep_id", S), ("config_id", S), ("run_number", I), ("status", S), ("cold", B),
        ("restart_ms", F), ("ingest_ms", F), ("analysis_ms", F), ("report_ms", F), ("total_ms", F),
        ("started_at", TS), ("finished_at", TS), ("run_attempt", I), ("restart_strategy", S),
        ("error", S), ("corpus_fingerprint", S), ("record_ms", F), ("warmup_ms", F),
        ("ingest_cached", B), ("host", S)]),
    "llm_calls": pa.schema([
        ("sweep_id", S), ("config_id", S), ("run_number", I), ("stage", S), ("attempt", I),
        ("run_attempt", I), ("status", S), ("error", S), ("model", S), ("options_json", S),
        ("prompt", S), ("response", S), ("ttft_ms", F), ("wall_ms", F), ("load_duration_ms", F),
        ("prompt_eval_count", I), ("prompt_eval_duration_ms", F), ("eval_count", I),
        ("eval_duration_ms", F), ("total_duration_ms", F), ("throughput_tps", F),
        ("done_reason", S), ("started_at", TS), ("chunks", I), ("is_cold", B), ("cold_reason", S),
        ("truncated", B), ("truncation_reason", S), ("prompt_chars", I), ("num_ctx", I),
        ("gpu_index", I), ("gpu_name", S), ("gpu_driver", S), ("gpu_mem_peak_mb", F),
        ("gpu_util_mean_pct", F), ("gpu_power_mean_w", F), ("gpu_energy_j", F),
        ("gpu_energy_source", S), ("gpu_temp_max_c", F), ("gpu_sm_clock_mean_mhz", F),
        ("gpu_samples", I), ("host_load1", F), ("host_other_cpu_s", F), ("host_server_cpu_s", F),
        ("host_harness_cpu_s", F), ("host_contended", B), ("host", S), ("ttft_clock", S)]),
    "fleet_hosts": pa.schema([
        ("sweep_id", S), ("host_id", S), ("server_url", S), ("server_version", S), ("engine", S),
        ("environment_json", S), ("seen_at", TS)]),
    "ingest_problems": pa.schema([
        ("sweep_id", S), ("corpus_fingerprint", S), ("path", S), ("kind", S), ("detail", S)]),
    "quality_scores": pa.schema([
        ("sweep_id", S), ("config_id", S), ("run_number", I), ("attempt", I), ("stage", S),
        ("run_attempt", I), ("sections_present", F), ("markdown_structure", F),
        ("numeric_grounding", F), ("repetition", F), ("length_words", I), ("overall", F),
        ("missing_sections", S), ("ungrounded_numbers", I), ("notes", S), ("scorer_version", S),
        ("scored_at", TS)]),
}
SHARD_SCHEMAS = {**SCHEMAS, shards.CONFIG_INFO: shards.CONFIG_INFO_SCHEMA}  # what a shard may hold
MERGE_WAIT_S = 1.0  # a merge after a run waits this long for a lock, then leaves its shard pending


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def arrow_table(table: str, rows: Iterable[dict]) -> pa.Table:
    """Rows -> an Arrow table of the table's schema; unknown keys are an error."""
    schema = SHARD_SCHEMAS[table]
    rows = list(rows)
    for row in rows:
        extra = set(row) - set(schema.names)
        if extra:
            raise KeyError(f"{table}: unknown columns {sorted(extra)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def _insert(con, table: str, rows: list[dict], *, replace: bool = False,
            ignore: bool = False) -> None:
    if not rows:
        return
    batch = arrow_table(table, rows)
    verb = "INSERT OR REPLACE INTO" if replace else "INSERT OR IGNORE INTO" if ignore else "INSERT INTO"
    con.register("_batch", batch)
    try:
        con.execute(f"{verb} {table} BY NAME SELECT * FROM _batch")
    finally:
        try:
            con.unregister("_batch")
        except duckdb.Error:  # an aborted transaction refuses even this; rollback follows
            pass


def _transaction(path: Path, work, *, timeout_s: float = 60.0, on_lock=None) -> None:
    with connect(path, timeout_s=timeout_s, on_lock=on_lock) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            work(con)
            con.execute("COMMIT")
        except Exception as exc:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # a failed COMMIT (disk full) leaves no transaction: keep the real cause
            mapped = storage_error(exc, path) if isinstance(exc, duckdb.Error) else None
            if mapped is not None:
                raise mapped from None
            raise


def store(path: Path, sweep_id: str, kind: str, tables: dict[str, list[dict]], *,
          merge_wait_s: float = MERGE_WAIT_S, on_lock=None, root: Path | None = None,
          merge: bool = True) -> shards.MergeOutcome:
    """Rows made durable as a shard, then merged with every pending shard of the sweep if the
    warehouse frees within ``merge_wait_s`` (else they wait for the next merge).

    ``root``: where shards go (default: beside the warehouse); ``merge=False`` on a fleet host,
    whose shards travel to the coordinator, the only writer of the warehouse."""
    batch = {table: arrow_table(table, rows) for table, rows in tables.items() if rows}
    shards.write_shard(Path(path), sweep_id, batch, kind, root=root)
    if not merge:
        return shards.MergeOutcome(0, 1)
    return shards.merge_pending(Path(path), sweep_id, timeout_s=merge_wait_s, on_lock=on_lock, root=root)


def start_sweep(path: Path, sweep: dict, configs: list[dict], *, timeout_s: float = 60.0,
                on_lock=None) -> None:
    """Insert (or, on resume, refresh) the sweep row and its configs."""
    def work(con):
        exists = first(con.execute("SELECT started_at FROM sweeps WHERE sweep_id = ?",
                                   [sweep["sweep_id"]]))
        row = dict(sweep)
        if exists:
            row["started_at"] = exists[0]
        _insert(con, "sweeps", [row], replace=True)
        _insert(con, "configs", configs, ignore=True)  # keep /api/ps info from earlier runs
    _transaction(Path(path), work, timeout_s=timeout_s, on_lock=on_lock)


def finish_sweep(path: Path, sweep_id: str, status: str, note: str | None = None, *,
                 timeout_s: float = 60.0, on_lock=None) -> None:
    def work(con):
        con.execute("UPDATE sweeps SET status = ?, finished_at = ?, note = ? WHERE sweep_id = ?",
                    [status, datetime.now(UTC), note, sweep_id])
    _transaction(Path(path), work, timeout_s=timeout_s, on_lock=on_lock)


def mark_interrupted(path: Path, sweep_ids: list[str], note: str) -> None:
    """Sweeps left ``running`` by an owner that is gone (its lease is free)."""
    def work(con):
        for sweep_id in sweep_ids:
            con.execute("UPDATE sweeps SET status = 'interrupted', note = ? "
                        "WHERE sweep_id = ? AND status = 'running'", [note, sweep_id])
    if sweep_ids:
        _transaction(Path(path), work)


def update_config_server_info(path: Path, sweep_id: str, config_id: str, *, show: dict | None,
                              ps: dict | None, on_lock=None, **where) -> shards.MergeOutcome:
    """What the server says about the model as loaded for this config (/api/show, /api/ps)."""
    row = {"sweep_id": sweep_id, "config_id": config_id, "show_json": to_json(show),
           "ps_json": to_json(ps), "size_vram": (ps or {}).get("size_vram"),
           "context_length": (ps or {}).get("context_length")}
    return store(path, sweep_id, "config-info", {shards.CONFIG_INFO: [row]}, on_lock=on_lock, **where)


def record_call_attempt(path: Path, row: dict, *, on_lock=None, **where) -> shards.MergeOutcome:
    """A failed attempt is made durable at once, so a crash later cannot lose it."""
    return store(path, row["sweep_id"], "attempt", {"llm_calls": [row]}, on_lock=on_lock, **where)


def record_host(path: Path, row: dict, **where) -> shards.MergeOutcome:
    """What a fleet host reported about itself (server, engine, environment)."""
    return store(path, row["sweep_id"], "host", {"fleet_hosts": [row]}, **where)


def record_run(path: Path, run: dict, calls: list[dict], problems: list[dict] | None = None,
               *, on_lock=None, **where) -> shards.MergeOutcome:
    """A finished run, its successful calls and its corpus's problems: one shard, all or nothing."""
    rows = [{"sweep_id": run["sweep_id"], "corpus_fingerprint": run.get("corpus_fingerprint") or "",
             **p} for p in problems or []]
    return store(path, run["sweep_id"], "run", {"llm_calls": calls, "runs": [run],
                                                "ingest_problems": rows}, on_lock=on_lock, **where)


def record_ingest_problems(path: Path, sweep_id: str, fingerprint: str, problems: list[dict]) -> None:
    rows = [{"sweep_id": sweep_id, "corpus_fingerprint": fingerprint, **p} for p in problems]
    _transaction(Path(path), lambda con: _insert(con, "ingest_problems", rows, replace=True))


def record_quality_scores(path: Path, scores: list[dict]) -> None:
    """Quality scores of report calls; a rescore (new scorer version) replaces the old row.

    Plain parameter binding, not pyarrow: ``pa.table`` imports pandas, and the
    report that calls this must stay light.
    """
    names = SCHEMAS["quality_scores"].names
    for row in scores:
        extra = set(row) - set(names)
        if extra:
            raise KeyError(f"quality_scores: unknown columns {sorted(extra)}")
    values = [[row.get(name) for name in names] for row in scores]

    def work(con):
        if values:
            con.executemany(f"INSERT OR REPLACE INTO quality_scores ({', '.join(names)}) "
                            f"VALUES ({', '.join('?' for _ in names)})", values)
    _transaction(Path(path), work)


def adopt_host_environment(path: Path, sweep_id: str) -> None:
    """A fleet sweep that ran on exactly one host (replicate mode) takes that host's server and
    environment as its own, so the report's environment section describes the machine."""
    def work(con):
        hosts = con.execute("SELECT host_id, server_url, server_version, engine, environment_json"
                            " FROM fleet_hosts WHERE sweep_id = ?", [sweep_id]).fetchall()
        if len(hosts) == 1:
            host, url, version, engine, env = hosts[0]
            con.execute("UPDATE sweeps SET host = ?, ollama_url = ?, server_version = ?, engine = ?,"
                        " environment_json = ? WHERE sweep_id = ?", [host, url, version, engine, env, sweep_id])
    _transaction(Path(path), work)
