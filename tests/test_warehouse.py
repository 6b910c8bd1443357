"""The DuckDB warehouse: migrations, atomic writes through pyarrow, the summary view, locks."""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

import duckdb
import pytest

from tr111.errors import ConfigError
from tr111.warehouse.shards import pending_shards
from tr111.warehouse import connect, migrate, open_read_only, writer
from tr111.warehouse.migrations import MIGRATIONS
from tr111.warehouse.reader import attempt_counters, finished_runs, resolve_sweep_id


def _call(config, run, stage, tps, ttft, *, attempt=1, status="ok", run_attempt=1):
    return {"sweep_id": "s1", "config_id": config, "run_number": run, "stage": stage,
            "attempt": attempt, "run_attempt": run_attempt, "status": status,
            "throughput_tps": tps, "ttft_ms": ttft, "eval_count": 10,
            "started_at": datetime.now(UTC), "prompt": "p", "response": "r"}


def _run(config, run, status="ok", run_attempt=1):
    return {"sweep_id": "s1", "config_id": config, "run_number": run, "status": status,
            "run_attempt": run_attempt, "started_at": datetime.now(UTC), "total_ms": 1.0}


def test_migrations_apply_once_and_record_themselves(warehouse_path):
    with connect(warehouse_path) as con:
        names = [r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()]
        assert names == [fn.__name__ for fn in MIGRATIONS]
        assert migrate(con) == []


def test_config_summary_matches_a_recomputation(warehouse_path):
    values = {1: (100.0, 50.0), 2: (104.0, 70.0), 3: (98.0, 40.0)}
    for run, (tps, ttft) in values.items():
        writer.record_run(warehouse_path, _run("c1", run), [
            _call("c1", run, "analysis", tps, ttft), _call("c1", run, "report", tps + 1, ttft / 2)])
    # A failed attempt and a warm-up call never enter the statistics.
    writer.record_call_attempt(warehouse_path, _call("c1", 1, "analysis", 1.0, 9999.0, attempt=0,
                                                     status="error"))
    writer.record_call_attempt(warehouse_path, _call("c1", 1, "warmup", 1.0, 9999.0))
    tps = [v[0] for v in values.values()] + [v[0] + 1 for v in values.values()]
    ttft = [v[1] for v in values.values()] + [v[1] / 2 for v in values.values()]
    with open_read_only(warehouse_path) as con:
        row = con.execute("SELECT calls, avg_throughput_tps, stddev_throughput_tps, cv_throughput_pct,"
                          " avg_ttft_ms, stddev_ttft_ms, cv_ttft_pct, total_tokens"
                          " FROM config_summary WHERE config_id = 'c1'").fetchone()
    assert row[0] == 6
    assert row[1] == pytest.approx(statistics.mean(tps))
    assert row[2] == pytest.approx(statistics.stdev(tps))
    assert row[3] == pytest.approx(statistics.stdev(tps) / statistics.mean(tps) * 100)
    assert row[4] == pytest.approx(statistics.mean(ttft))
    assert row[5] == pytest.approx(statistics.stdev(ttft))
    assert row[6] == pytest.approx(statistics.stdev(ttft) / statistics.mean(ttft) * 100)
    assert row[7] == 60


def test_rerun_of_a_failed_run_supersedes_its_calls(warehouse_path):
    writer.record_run(warehouse_path, _run("c1", 1, status="error"),
                      [_call("c1", 1, "analysis", 10.0, 5.0)])
    writer.record_run(warehouse_path, _run("c1", 1, run_attempt=2),
                      [_call("c1", 1, "analysis", 20.0, 5.0, attempt=2, run_attempt=2),
                       _call("c1", 1, "report", 20.0, 5.0, attempt=1, run_attempt=2)])
    with open_read_only(warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert con.execute("SELECT calls, avg_throughput_tps FROM config_summary").fetchone() == (2, 20.0)
        assert finished_runs(con, "s1") == {("c1", 1)}
        calls, runs = attempt_counters(con, "s1")
        assert calls[("c1", 1, "analysis")] == 2 and runs[("c1", 1)] == 2


def test_record_run_is_atomic(warehouse_path):
    bad_call = _call("c1", 1, "analysis", 1.0, 1.0)
    bad_call["no_such_column"] = 1
    with pytest.raises(KeyError):
        writer.record_run(warehouse_path, _run("c1", 1), [bad_call])
    assert pending_shards(warehouse_path) == []  # refused before anything reached the disk
    duplicate = _call("c1", 2, "analysis", 1.0, 1.0)
    writer.record_call_attempt(warehouse_path, duplicate)
    writer.record_call_attempt(warehouse_path, duplicate)  # a replayed shard: replaced, not doubled
    with open_read_only(warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 1


def test_resolve_sweep_id(warehouse_path):
    writer.start_sweep(warehouse_path, {"sweep_id": "old", "started_at": datetime(2026, 1, 1, tzinfo=UTC)}, [])
    writer.start_sweep(warehouse_path, {"sweep_id": "new", "started_at": datetime(2026, 2, 1, tzinfo=UTC)}, [])
    with open_read_only(warehouse_path) as con:
        assert resolve_sweep_id(con, "latest") == "new"
        assert resolve_sweep_id(con, "old") == "old"
        with pytest.raises(ConfigError, match="no sweep"):
            resolve_sweep_id(con, "missing")


def test_reader_never_creates_a_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        with open_read_only(tmp_path / "absent.duckdb"):
            pass
    assert not (tmp_path / "absent.duckdb").exists()


def test_read_only_connection_cannot_write(warehouse_path):
    writer.start_sweep(warehouse_path, {"sweep_id": "s"}, [])
    with open_read_only(warehouse_path) as con:
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM sweeps")


@pytest.mark.slow
def test_writer_waits_for_a_lock_held_by_another_process(warehouse_path):
    writer.start_sweep(warehouse_path, {"sweep_id": "s"}, [])
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, time, sys
        con = duckdb.connect({str(warehouse_path)!r})
        print("locked", flush=True)
        time.sleep(1.5)
        con.close()
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    writer.finish_sweep(warehouse_path, "s", "completed")
    waited = time.monotonic() - t0
    holder.wait(10)
    assert waited > 0.5  # it met the lock, retried, and got through
    with open_read_only(warehouse_path) as con:
        assert con.execute("SELECT status FROM sweeps").fetchone()[0] == "completed"


# The Arrow type writer.SCHEMAS sends for each DuckDB column type of the migrations (INTEGER
# and BIGINT both receive int64: DuckDB narrows on insert, and a value out of range fails loudly).
ARROW_FOR_DUCKDB = {"VARCHAR": "string", "DOUBLE": "double", "INTEGER": "int64", "BIGINT": "int64",
                    "BOOLEAN": "bool", "TIMESTAMP WITH TIME ZONE": "timestamp[us, tz=UTC]"}


def test_writer_schemas_match_the_migrated_tables(tmp_path):
    """writer.SCHEMAS repeats the migrations' columns: a column added to one and not the
    other (or reordered, or retyped) fails here, not at the first insert of a sweep."""
    con = duckdb.connect(str(tmp_path / "fresh.duckdb"))
    try:
        migrate(con)
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal").fetchall()} - {"_migrations", "_merged_shards"}
        assert tables == set(writer.SCHEMAS)
        for table, schema in writer.SCHEMAS.items():
            described = [(name, ARROW_FOR_DUCKDB.get(kind, kind))
                         for name, kind, *_ in con.execute(f"DESCRIBE {table}").fetchall()]
            assert described == [(f.name, str(f.type)) for f in schema], table
    finally:
        con.close()
