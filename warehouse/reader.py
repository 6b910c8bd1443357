"""Read-side queries shared by the sweep (resume), the report and the CLI."""

from __future__ import annotations

import duckdb

from tr111.errors import ConfigError
from tr111.warehouse.connection import first


def finished_runs(con: duckdb.DuckDBPyConnection, sweep_id: str) -> set[tuple[str, int]]:
    """(config_id, run_number) of the runs that succeeded: a resume skips them."""
    rows = con.execute("SELECT config_id, run_number FROM runs WHERE sweep_id = ? AND status = 'ok'",
                       [sweep_id]).fetchall()
    return {(c, int(r)) for c, r in rows}


def attempt_counters(con: duckdb.DuckDBPyConnection, sweep_id: str) -> tuple[dict, dict]:
    """Highest call attempt per (config, run, stage) and run attempt per (config, run)."""
    calls = con.execute(
        "SELECT config_id, run_number, stage, max(attempt) FROM llm_calls WHERE sweep_id = ? "
        "GROUP BY ALL", [sweep_id]).fetchall()
    runs = con.execute(
        "SELECT config_id, run_number, max(run_attempt) FROM ("
        " SELECT config_id, run_number, run_attempt FROM runs WHERE sweep_id = ?"
        " UNION ALL SELECT config_id, run_number, run_attempt FROM llm_calls WHERE sweep_id = ?"
        ") GROUP BY ALL", [sweep_id, sweep_id]).fetchall()
    return ({(c, int(r), s): int(a) for c, r, s, a in calls},
            {(c, int(r)): int(a or 0) for c, r, a in runs})


def resolve_sweep_id(con: duckdb.DuckDBPyConnection, sweep: str | None) -> str:
    """``latest`` (or None) -> the most recently started sweep; else check it exists."""
    if sweep in (None, "", "latest"):
        row = first(con.execute("SELECT sweep_id FROM sweeps ORDER BY started_at DESC LIMIT 1"))
        if row is None:
            raise ConfigError("the warehouse holds no sweep yet")
        return row[0]
    if first(con.execute("SELECT 1 FROM sweeps WHERE sweep_id = ?", [sweep])) is None:
        raise ConfigError(f"no sweep {sweep!r} in the warehouse")
    return sweep


def sweep_row(con: duckdb.DuckDBPyConnection, sweep_id: str) -> dict:
    cur = con.execute("SELECT * FROM sweeps WHERE sweep_id = ?", [sweep_id])
    names = [d[0] for d in cur.description]
    return dict(zip(names, first(cur)))


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def recorded_order_seed(con: duckdb.DuckDBPyConnection, sweep_id: str) -> int | None:
    """The run-order seed a sweep was started with (None for a new sweep)."""
    row = first(con.execute("SELECT order_seed FROM sweeps WHERE sweep_id = ?", [sweep_id]))
    return None if row is None or row[0] is None else int(row[0])


def recorded_experiment(con: duckdb.DuckDBPyConnection, sweep_id: str) -> dict | None:
    """The matrix a sweep was started with (its ``matrix_json``, the ``model`` column winning),
    or None for a sweep id the warehouse does not hold yet."""
    import json

    row = first(con.execute("SELECT model, matrix_json FROM sweeps WHERE sweep_id = ?", [sweep_id]))
    if row is None:
        return None
    model, matrix_json = row
    try:
        recorded = json.loads(matrix_json) if matrix_json else {}
    except ValueError:
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    if model is not None:
        recorded["model"] = model
    return recorded


def running_sweeps(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Sweeps recorded as ``running``: live ones hold a lease (tr111.run.lease), others were
    interrupted."""
    return [r[0] for r in con.execute("SELECT sweep_id FROM sweeps WHERE status = 'running'").fetchall()]
