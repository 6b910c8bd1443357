"""Schema as an ordered list of migration functions (after simonw/llm's migrations.py).

Each function runs once, in order, inside a transaction, and is recorded in
``_migrations``. Never edit a shipped migration: append a new one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Callable

import duckdb

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply pending migrations; returns the names applied now."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ)")
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            fn(con)
            con.execute("INSERT INTO _migrations VALUES (?, ?)", [fn.__name__, datetime.now(UTC)])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(fn.__name__)
    return applied


@migration
def m001_core_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE sweeps (
            sweep_id VARCHAR PRIMARY KEY, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
            status VARCHAR, model VARCHAR, ollama_url VARCHAR, server_version VARCHAR,
            matrix_json VARCHAR, host VARCHAR, engine VARCHAR, engine_model_file VARCHAR,
            tr111_version VARCHAR, environment_json VARCHAR, cache_bust BOOLEAN, warmup BOOLEAN,
            corpus_dir VARCHAR, note VARCHAR)""")
    con.execute("""
        CREATE TABLE configs (
            sweep_id VARCHAR, config_id VARCHAR, num_gpu INTEGER, num_ctx INTEGER,
            temperature DOUBLE, options_json VARCHAR, is_baseline BOOLEAN,
            show_json VARCHAR, ps_json VARCHAR, size_vram BIGINT, context_length INTEGER,
            position INTEGER, PRIMARY KEY (sweep_id, config_id))""")
    con.execute("""
        CREATE TABLE runs (
            sweep_id VARCHAR, config_id VARCHAR, run_number INTEGER, status VARCHAR,
            cold BOOLEAN, restart_ms DOUBLE, ingest_ms DOUBLE, analysis_ms DOUBLE,
            report_ms DOUBLE, total_ms DOUBLE, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
            run_attempt INTEGER, restart_strategy VARCHAR, error VARCHAR,
            corpus_fingerprint VARCHAR, record_ms DOUBLE, warmup_ms DOUBLE, ingest_cached BOOLEAN,
            PRIMARY KEY (sweep_id, config_id, run_number))""")
    con.execute("""
        CREATE TABLE llm_calls (
            sweep_id VARCHAR, config_id VARCHAR, run_number INTEGER, stage VARCHAR,
            attempt INTEGER, run_attempt INTEGER, status VARCHAR, error VARCHAR, model VARCHAR,
            options_json VARCHAR, prompt VARCHAR, response VARCHAR, ttft_ms DOUBLE,
            wall_ms DOUBLE, load_duration_ms DOUBLE, prompt_eval_count INTEGER,
            prompt_eval_duration_ms DOUBLE, eval_count INTEGER, eval_duration_ms DOUBLE,
            total_duration_ms DOUBLE, throughput_tps DOUBLE, done_reason VARCHAR,
            started_at TIMESTAMPTZ, chunks INTEGER, is_cold BOOLEAN, cold_reason VARCHAR,
            truncated BOOLEAN, truncation_reason VARCHAR, prompt_chars INTEGER, num_ctx INTEGER,
            gpu_index INTEGER, gpu_name VARCHAR, gpu_driver VARCHAR, gpu_mem_peak_mb DOUBLE,
            gpu_util_mean_pct DOUBLE, gpu_power_mean_w DOUBLE, gpu_energy_j DOUBLE,
            gpu_energy_source VARCHAR, gpu_temp_max_c DOUBLE, gpu_sm_clock_mean_mhz DOUBLE,
            gpu_samples INTEGER,
            PRIMARY KEY (sweep_id, config_id, run_number, stage, attempt))""")
    con.execute("""
        CREATE TABLE ingest_problems (
            sweep_id VARCHAR, corpus_fingerprint VARCHAR, path VARCHAR, kind VARCHAR,
            detail VARCHAR, PRIMARY KEY (sweep_id, path, kind))""")
    # Statistics use the successful analysis/report calls of each run's latest execution.
    con.execute("""
        CREATE VIEW stat_calls AS
        SELECT c.* FROM llm_calls c
        JOIN runs r USING (sweep_id, config_id, run_number)
        WHERE c.status = 'ok' AND c.stage IN ('analysis', 'report')
          AND c.run_attempt = r.run_attempt""")
    con.execute("""
        CREATE VIEW config_summary AS
        SELECT sweep_id, config_id,
               count(*) AS calls,
               avg(throughput_tps) AS avg_throughput_tps,
               stddev_samp(throughput_tps) AS stddev_throughput_tps,
               stddev_samp(throughput_tps) / avg(throughput_tps) * 100 AS cv_throughput_pct,
               avg(ttft_ms) AS avg_ttft_ms,
               stddev_samp(ttft_ms) AS stddev_ttft_ms,
               stddev_samp(ttft_ms) / avg(ttft_ms) * 100 AS cv_ttft_pct,
               sum(eval_count) AS total_tokens
        FROM stat_calls
        GROUP BY sweep_id, config_id""")


@migration
def m002_quality_scores(con: duckdb.DuckDBPyConnection) -> None:
    """Automated quality scores of report-stage responses (tr111.quality), one row per call."""
    con.execute("""
        CREATE TABLE quality_scores (
            sweep_id VARCHAR, config_id VARCHAR, run_number INTEGER, attempt INTEGER,
            stage VARCHAR, run_attempt INTEGER, sections_present DOUBLE, markdown_structure DOUBLE,
            numeric_grounding DOUBLE, repetition DOUBLE, length_words INTEGER, overall DOUBLE,
            missing_sections VARCHAR, ungrounded_numbers INTEGER, notes VARCHAR,
            scorer_version VARCHAR, scored_at TIMESTAMPTZ,
            PRIMARY KEY (sweep_id, config_id, run_number, attempt))""")


@migration
def m003_stage_summary(con: duckdb.DuckDBPyConnection) -> None:
    """Per config and stage beside config_summary: the analysis call (long prompt) and the report
    call (short prompt) apart, with decode and prefill rate and warm TTFT's parts (issue 10).

    A frozen copy of the report's formulas (tr111/report/queries.py): prefill rate =
    prompt_eval_count / prompt_eval_duration, client overhead = TTFT - load - prefill;
    geo_* are geometric means.
    """
    con.execute("""
        CREATE VIEW stage_summary AS
        WITH c AS (
            SELECT *, NOT coalesce(is_cold, false) AS warm,
                   CASE WHEN prompt_eval_duration_ms > 0
                        THEN prompt_eval_count * 1000.0 / prompt_eval_duration_ms END AS prefill_tps
            FROM stat_calls)
        SELECT sweep_id, config_id, stage,
               count(*) AS calls,
               count(*) FILTER (WHERE warm) AS warm_calls,
               count(*) FILTER (WHERE coalesce(truncated, false)) AS truncated_calls,
               avg(prompt_eval_count) AS avg_prompt_tokens,
               avg(throughput_tps) AS avg_decode_tps,
               exp(avg(ln(CASE WHEN throughput_tps > 0 THEN throughput_tps END))) AS geo_decode_tps,
               stddev_samp(throughput_tps) / avg(throughput_tps) * 100 AS cv_decode_pct,
               avg(prefill_tps) AS avg_prefill_tps,
               exp(avg(ln(CASE WHEN prefill_tps > 0 THEN prefill_tps END))) AS geo_prefill_tps,
               avg(ttft_ms) FILTER (WHERE warm) AS avg_warm_ttft_ms,
               exp(avg(ln(CASE WHEN ttft_ms > 0 THEN ttft_ms END)) FILTER (WHERE warm)) AS geo_warm_ttft_ms,
               stddev_samp(ttft_ms) FILTER (WHERE warm) / avg(ttft_ms) FILTER (WHERE warm) * 100
                   AS cv_warm_ttft_pct,
               avg(ttft_ms) FILTER (WHERE NOT warm) AS avg_cold_ttft_ms,
               avg(load_duration_ms) FILTER (WHERE warm) AS avg_warm_load_ms,
               avg(prompt_eval_duration_ms) FILTER (WHERE warm) AS avg_warm_prefill_ms,
               avg(ttft_ms - load_duration_ms - prompt_eval_duration_ms) FILTER (WHERE warm)
                   AS avg_warm_client_overhead_ms,
               sum(eval_count) AS total_tokens
        FROM c
        GROUP BY sweep_id, config_id, stage""")


@migration
def m004_run_order_and_host_load(con: duckdb.DuckDBPyConnection) -> None:
    """Run order (seed, order, restarts it costs) on the sweep; what the host did during each call."""
    for column, kind in (("order_seed", "BIGINT"), ("run_order", "VARCHAR"), ("restarts_planned", "INTEGER")):
        con.execute(f"ALTER TABLE sweeps ADD COLUMN {column} {kind}")
    for column, kind in (("host_load1", "DOUBLE"), ("host_other_cpu_s", "DOUBLE"),
                         ("host_server_cpu_s", "DOUBLE"), ("host_harness_cpu_s", "DOUBLE"),
                         ("host_contended", "BOOLEAN")):
        con.execute(f"ALTER TABLE llm_calls ADD COLUMN {column} {kind}")


@migration
def m005_shards_and_owner(con: duckdb.DuckDBPyConnection) -> None:
    """Merged run shards (tr111.warehouse.shards: a repeated merge is a no-op) and the process
    that owns each sweep (tr111.run.lease)."""
    con.execute("""
        CREATE TABLE _merged_shards (
            name VARCHAR PRIMARY KEY, sweep_id VARCHAR, kind VARCHAR, rows INTEGER,
            merged_at TIMESTAMPTZ)""")
    con.execute("ALTER TABLE sweeps ADD COLUMN owner_host VARCHAR")
    con.execute("ALTER TABLE sweeps ADD COLUMN owner_pid INTEGER")


@migration
def m006_fleet(con: duckdb.DuckDBPyConnection) -> None:
    """Fleet sweeps (tr111.fleet): the host each run and call ran on, the fleet a sweep belongs
    to, and what each host reported about itself."""
    con.execute("ALTER TABLE runs ADD COLUMN host VARCHAR")
    con.execute("ALTER TABLE llm_calls ADD COLUMN host VARCHAR")
    con.execute("ALTER TABLE sweeps ADD COLUMN fleet_id VARCHAR")
    con.execute("ALTER TABLE sweeps ADD COLUMN fleet_mode VARCHAR")
    con.execute("""
        CREATE TABLE fleet_hosts (
            sweep_id VARCHAR, host_id VARCHAR, server_url VARCHAR, server_version VARCHAR,
            engine VARCHAR, environment_json VARCHAR, seen_at TIMESTAMPTZ,
            PRIMARY KEY (sweep_id, host_id))""")


@migration
def m007_ttft_clock(con: duckdb.DuckDBPyConnection) -> None:
    """Where each call's TTFT and wall time were stamped: 'socket' (the wire clock,
    tr111/ollama/wire.py) or 'client' (around the HTTP client). Earlier rows were stamped
    around httpx, ~1-2 ms later per call on a 2-core host: NULL, read as 'client'."""
    con.execute("ALTER TABLE llm_calls ADD COLUMN ttft_clock VARCHAR")
