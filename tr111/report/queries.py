"""SQL behind the report: DuckDB aggregates per config, so no raw call rows reach Python.

Statistics read the ``stat_calls`` view (successful analysis/report calls of
each run's latest execution; warm-up calls are not in it), per config and
stage (tr111.report.metrics). TTFT is split by ``llm_calls.is_cold`` (NULL
counts as warm: a call nobody classified paid no known load). Every positive
quantity also gets the mean and sd of its logs, for its interval (log_t_ci).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from tr111.stats.inference import Cell, summary
from tr111.stats.summary import DistributionSummary
from tr111.warehouse.reader import rows

WARM = "NOT coalesce(is_cold, false)"
COLD = "coalesce(is_cold, false)"
TRUNCATED = "coalesce(truncated, false)"
CLOCK = "coalesce(ttft_clock, 'client')"  # rows from before the wire clock: stamped around httpx
# prefill rate (tok/s, Ollama's "prompt eval rate") and the client's part of TTFT, per call
PREFILL = ("(CASE WHEN prompt_eval_duration_ms > 0 THEN prompt_eval_count * 1000.0 / prompt_eval_duration_ms"
           " END)")
OVERHEAD = "(ttft_ms - load_duration_ms - prompt_eval_duration_ms)"
GPU_COLUMNS = ("gpu_name", "gpu_mem_peak_mb", "gpu_util_mean_pct", "gpu_power_mean_w", "gpu_energy_j",
               "gpu_energy_source")
COMPLETED = ("completed", "completed_with_errors")


def columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(columns(con, table))


def _dist(expr: str, prefix: str, where: str | None = None) -> str:
    """count, mean, sd, p50, p95, min, max of ``expr``, and mean / sd of its logs when > 0."""
    flt = f" FILTER (WHERE {where})" if where else ""
    log = f"ln(CASE WHEN {expr} > 0 THEN {expr} END)"
    return ", ".join([
        f"count({expr}){flt} AS {prefix}_n", f"avg({expr}){flt} AS {prefix}_mean",
        f"stddev_samp({expr}){flt} AS {prefix}_sd", f"quantile_cont({expr}, 0.5){flt} AS {prefix}_p50",
        f"quantile_cont({expr}, 0.95){flt} AS {prefix}_p95", f"min({expr}){flt} AS {prefix}_min",
        f"max({expr}){flt} AS {prefix}_max", f"count({log}){flt} AS {prefix}_npos",
        f"avg({log}){flt} AS {prefix}_lmean", f"stddev_samp({log}){flt} AS {prefix}_lsd"])


def _summary(row: dict, prefix: str) -> DistributionSummary:
    positive = row[f"{prefix}_npos"] == row[f"{prefix}_n"]  # a geometric mean needs every value > 0
    return summary(row[f"{prefix}_n"], row[f"{prefix}_mean"], row[f"{prefix}_sd"], row[f"{prefix}_p50"],
                   row[f"{prefix}_p95"], row[f"{prefix}_min"], row[f"{prefix}_max"],
                   row[f"{prefix}_lmean"] if positive else None, row[f"{prefix}_lsd"] if positive else None)


def configs(con: duckdb.DuckDBPyConnection, sweep_id: str, params: list[str]) -> list[dict]:
    """Config rows in matrix order, with ``levels``: the swept parameters' values (None: default)."""
    out = rows(con, "SELECT * FROM configs WHERE sweep_id = ? ORDER BY position, config_id", [sweep_id])
    for c in out:
        options = json.loads(c.get("options_json") or "{}")
        c["options"] = options
        c["levels"] = {p: (None if c["is_baseline"] else options.get(p)) for p in params}
        for name in ("show_json", "ps_json"):
            try:
                c[name[:-5]] = json.loads(c.get(name) or "null")
            except ValueError:
                c[name[:-5]] = None
    return out


def call_stats(con: duckdb.DuckDBPyConnection, sweep_id: str) -> dict[str, dict]:
    """Per config, both stages pooled: counts and TR111's own figures (kept for comparison only).

    ``study_tps`` is throughput over every call, ``study_ttft`` TTFT over every call
    (cold included): the study's definitions, bimodal by construction.
    """
    sql = f"""
        SELECT config_id, count(*) AS calls, count(DISTINCT run_number) AS runs,
               sum(eval_count) AS total_tokens, count(*) FILTER (WHERE {COLD}) AS cold_calls,
               count(*) FILTER (WHERE {TRUNCATED}) AS truncated,
               {_dist('throughput_tps', 'tps')}, {_dist('ttft_ms', 'ttft')}
        FROM stat_calls WHERE sweep_id = ? GROUP BY config_id"""
    out = {}
    for r in rows(con, sql, [sweep_id]):
        out[r["config_id"]] = {key: r[key] for key in ("calls", "runs", "total_tokens", "cold_calls", "truncated")}
        out[r["config_id"]].update(study_tps=_summary(r, "tps"), study_ttft=_summary(r, "ttft"))
    return out


def stage_stats(con: duckdb.DuckDBPyConnection, sweep_id: str) -> dict[str, dict[str, dict]]:
    """Per config and stage: decode and prefill rates, warm and cold TTFT, and warm TTFT's parts.

    The parts are arithmetic means over warm calls, so load + prefill + overhead
    add up to the mean warm TTFT (overhead = TTFT - load - prefill: the client's own).
    """
    sql = f"""
        SELECT config_id, stage, count(*) AS calls, count(*) FILTER (WHERE {WARM}) AS warm_calls,
               count(*) FILTER (WHERE {COLD}) AS cold_calls,
               count(*) FILTER (WHERE {TRUNCATED}) AS truncated,
               string_agg(DISTINCT truncation_reason, '; ') FILTER (WHERE {TRUNCATED}) AS truncation_reason,
               avg(prompt_eval_count) AS prompt_tokens, avg(eval_count) AS eval_tokens,
               avg(load_duration_ms) FILTER (WHERE {WARM}) AS load_ms,
               avg(prompt_eval_duration_ms) FILTER (WHERE {WARM}) AS prefill_ms,
               avg({OVERHEAD}) FILTER (WHERE {WARM}) AS overhead_ms,
               avg(load_duration_ms) FILTER (WHERE {COLD}) AS cold_load_ms,
               {_dist('throughput_tps', 'decode')}, {_dist(PREFILL, 'prefill')},
               {_dist('ttft_ms', 'warm', WARM)}, {_dist('ttft_ms', 'cold', COLD)}
        FROM stat_calls WHERE sweep_id = ? GROUP BY config_id, stage"""
    out: dict[str, dict[str, dict]] = {}
    scalars = ("calls", "warm_calls", "cold_calls", "truncated", "truncation_reason", "prompt_tokens",
               "eval_tokens", "load_ms", "prefill_ms", "overhead_ms", "cold_load_ms")
    for r in rows(con, sql, [sweep_id]):
        entry = {key: r[key] for key in scalars}
        entry.update(decode=_summary(r, "decode"), prefill=_summary(r, "prefill"), ttft=_summary(r, "warm"),
                     ttft_cold=_summary(r, "cold"))
        out.setdefault(r["config_id"], {})[r["stage"]] = entry
    return out


def ttft_clocks(con: duckdb.DuckDBPyConnection, sweep_id: str) -> list[str]:
    """Where the sweep's TTFTs were stamped: 'client' and/or 'socket' (tr111/ollama/wire.py)."""
    return [r[0] for r in con.execute(
        f"SELECT DISTINCT {CLOCK} FROM stat_calls WHERE sweep_id = ? ORDER BY 1", [sweep_id]).fetchall()]


def run_stats(con: duckdb.DuckDBPyConnection, sweep_id: str) -> dict[str, dict[str, dict]]:
    """Per config and measure key (metrics.Measure.key): the logs of the run means, summarised.

    Runs are the independent replicates, so tests (ANOVA, Welch, regressions)
    use these, on the log scale (tr111.stats.inference); ``mean``/``sd`` are of
    ln(run mean), ``ss`` their sum of squared deviations, ``truncated`` counts the
    stage's calls whose prompt was truncated, ``clock`` says where their TTFTs were stamped
    ('socket', 'client' or 'mixed'; tr111/ollama/wire.py).
    """
    parts = []
    for key in ("decode", "prefill", "ttft"):
        log = f"ln(CASE WHEN {key} > 0 THEN {key} END)"
        parts.append(f"count({log}) AS {key}_n, avg({log}) AS {key}_mean, stddev_samp({log}) AS {key}_sd, "
                     f"var_pop({log}) * count({log}) AS {key}_ss")
    sql = f"""
        WITH r AS (
            SELECT config_id, stage, run_number, avg(throughput_tps) AS decode, avg({PREFILL}) AS prefill,
                   avg(ttft_ms) FILTER (WHERE {WARM}) AS ttft, count(*) FILTER (WHERE {TRUNCATED}) AS truncated,
                   min({CLOCK}) AS clock_lo, max({CLOCK}) AS clock_hi
            FROM stat_calls WHERE sweep_id = ? GROUP BY config_id, stage, run_number)
        SELECT config_id, stage, sum(truncated) AS truncated, min(clock_lo) AS clock_lo, max(clock_hi) AS clock_hi,
               {', '.join(parts)} FROM r GROUP BY config_id, stage"""
    out: dict[str, dict[str, dict]] = {}
    for r in rows(con, sql, [sweep_id]):
        for key in ("decode", "prefill", "ttft"):
            out.setdefault(r["config_id"], {})[f"{key}_{r['stage']}"] = {
                "n": r[f"{key}_n"], "mean": r[f"{key}_mean"], "sd": r[f"{key}_sd"], "ss": r[f"{key}_ss"] or 0.0,
                "truncated": int(r["truncated"] or 0),
                "clock": r["clock_lo"] if r["clock_lo"] == r["clock_hi"] else "mixed"}
    return out


def cells(config_list: list[dict], runs: dict[str, dict], key: str, factors: list[str],
          exclude: set[str] = frozenset()) -> list[Cell]:
    """One ANOVA cell per non-baseline config (not in ``exclude``): levels and log run-mean n / mean / SS."""
    out = []
    for c in config_list:
        stats = runs.get(c["config_id"], {}).get(key)
        levels = tuple(c["levels"].get(f) for f in factors)
        if (c["is_baseline"] or c["config_id"] in exclude or not stats or not stats["n"]
                or any(v is None for v in levels)):
            continue
        out.append(Cell(levels, int(stats["n"]), float(stats["mean"]), float(stats["ss"])))
    return out


def gpu_stats(con: duckdb.DuckDBPyConnection, sweep_id: str) -> list[dict] | None:
    """Per-config GPU telemetry; None when the columns do not exist or every value is NULL."""
    have = columns(con, "llm_calls")
    if not set(GPU_COLUMNS) <= have:
        return None
    if con.execute("SELECT 1 FROM llm_calls WHERE sweep_id = ? AND gpu_name IS NOT NULL LIMIT 1",
                   [sweep_id]).fetchone() is None:
        return None
    out = rows(con, """
        SELECT config_id, count(*) FILTER (WHERE gpu_name IS NOT NULL) AS calls,
               string_agg(DISTINCT gpu_name, ', ') AS gpu_name,
               max(gpu_mem_peak_mb) AS mem_peak_mb, avg(gpu_util_mean_pct) AS util_pct,
               avg(gpu_power_mean_w) AS power_w, sum(gpu_energy_j) AS energy_j,
               sum(eval_count) FILTER (WHERE gpu_energy_j IS NOT NULL) AS energy_tokens,
               string_agg(DISTINCT gpu_energy_source, ', ') AS energy_source
        FROM stat_calls WHERE sweep_id = ? GROUP BY config_id ORDER BY config_id""", [sweep_id])
    if not any(r["calls"] for r in out):
        return None
    for r in out:
        r["j_per_token"] = (r["energy_j"] / r["energy_tokens"]
                            if r["energy_j"] is not None and r["energy_tokens"] else None)
    return out


def runs(con: duckdb.DuckDBPyConnection, sweep_id: str, limit: int) -> tuple[list[dict], dict]:
    counts = rows(con, """
        SELECT count(*) AS runs, count(*) FILTER (WHERE status = 'ok') AS runs_ok,
               count(DISTINCT config_id) AS configs_run FROM runs WHERE sweep_id = ?""", [sweep_id])[0]
    calls = rows(con, f"""
        SELECT count(*) FILTER (WHERE status = 'ok') AS calls_ok,
               count(*) FILTER (WHERE status = 'error') AS calls_error,
               count(*) FILTER (WHERE {TRUNCATED}) AS truncated
        FROM llm_calls WHERE sweep_id = ?""", [sweep_id])[0]
    counts.update(calls)
    where = "" if counts["runs"] <= limit else "AND status <> 'ok'"
    listed = rows(con, f"SELECT * FROM runs WHERE sweep_id = ? {where} ORDER BY started_at, config_id, "
                       f"run_number LIMIT {int(limit)}", [sweep_id])
    counts["runs_listed_all"] = counts["runs"] <= limit
    return listed, counts


def failed_calls(con: duckdb.DuckDBPyConnection, sweep_id: str, limit: int) -> list[dict]:
    return rows(con, f"""
        SELECT config_id, run_number, stage, attempt, error FROM llm_calls
        WHERE sweep_id = ? AND status = 'error' ORDER BY started_at, config_id, run_number, attempt
        LIMIT {int(limit)}""", [sweep_id])


def problems(con: duckdb.DuckDBPyConnection, sweep_id: str, limit: int) -> list[dict]:
    return rows(con, f"SELECT path, kind, detail FROM ingest_problems WHERE sweep_id = ? "
                     f"ORDER BY path, kind LIMIT {int(limit)}", [sweep_id])


def same_host(sweep: dict) -> str | None:
    """A fleet sweep is compared with sweeps of its own host only (each GPU against itself)."""
    return sweep.get("host") if sweep.get("fleet_id") else None


def fleet_table(con: duckdb.DuckDBPyConnection, sweep: dict) -> list[dict]:
    """Per config, stage and host, over every sweep of this sweep's fleet: the stage_summary
    figures (geometric means) beside the host(s) whose calls they come from."""
    if not sweep.get("fleet_id"):
        return []
    return rows(con, """
        SELECT ss.config_id, ss.stage, h.hosts, ss.sweep_id, ss.calls, ss.geo_decode_tps,
               ss.geo_prefill_tps, ss.geo_warm_ttft_ms, ss.warm_calls
        FROM stage_summary ss JOIN sweeps s USING (sweep_id)
        JOIN (SELECT sweep_id, config_id, string_agg(DISTINCT coalesce(host, '?'), ', '
                     ORDER BY coalesce(host, '?')) AS hosts
              FROM stat_calls GROUP BY sweep_id, config_id) h USING (sweep_id, config_id)
        WHERE s.fleet_id = ?
        ORDER BY ss.config_id, ss.stage, h.hosts""", [sweep["fleet_id"]])


def same_matrix_sweeps(con: duckdb.DuckDBPyConnection, sweep: dict, limit: int = 30) -> list[dict]:
    """Completed sweeps of the same matrix and model, up to and including this one, oldest first."""
    out = rows(con, f"""
        SELECT sweep_id, started_at, status FROM sweeps
        WHERE matrix_json = ? AND model = ? AND started_at <= ?
          AND (status IN {COMPLETED} OR sweep_id = ?) AND (CAST(? AS VARCHAR) IS NULL OR host = ?)
        ORDER BY started_at DESC, sweep_id DESC LIMIT {int(limit)}""",
               [sweep.get("matrix_json"), sweep.get("model"), sweep.get("started_at"), sweep["sweep_id"],
                *[same_host(sweep)] * 2])
    return out[::-1]


def previous_sweep(con: duckdb.DuckDBPyConnection, sweep: dict) -> str | None:
    row = con.execute(f"""
        SELECT sweep_id FROM sweeps
        WHERE matrix_json = ? AND model = ? AND status IN {COMPLETED} AND sweep_id <> ?
          AND started_at < ? AND (CAST(? AS VARCHAR) IS NULL OR host = ?)
        ORDER BY started_at DESC, sweep_id DESC LIMIT 1""",
                      [sweep.get("matrix_json"), sweep.get("model"), sweep["sweep_id"],
                       sweep.get("started_at"), *[same_host(sweep)] * 2]).fetchone()
    return row[0] if row else None


def trend(con: duckdb.DuckDBPyConnection, sweep_ids: list[str]) -> list[dict]:
    """Per sweep, config and stage: geometric means of decode rate and of warm TTFT (call level)."""
    if not sweep_ids:
        return []
    marks = ", ".join("?" for _ in sweep_ids)
    return rows(con, f"""
        SELECT sweep_id, config_id, stage,
               exp(avg(ln(CASE WHEN throughput_tps > 0 THEN throughput_tps END))) AS decode,
               exp(avg(ln(CASE WHEN ttft_ms > 0 THEN ttft_ms END)) FILTER (WHERE {WARM})) AS ttft
        FROM stat_calls WHERE sweep_id IN ({marks}) GROUP BY sweep_id, config_id, stage""", list(sweep_ids))


def quality_stats(con: duckdb.DuckDBPyConnection, sweep_id: str, table: str = "quality_scores") -> dict[str, dict]:
    """Per config: mean of each score over the report calls statistics use."""
    out = {}
    sql = f"""
        SELECT q.config_id, count(*) AS n, avg(q.overall) AS overall, stddev_samp(q.overall) AS overall_sd,
               avg(q.sections_present) AS sections, avg(q.markdown_structure) AS structure,
               avg(q.numeric_grounding) AS grounding, count(q.numeric_grounding) AS grounding_n,
               avg(q.repetition) AS repetition, avg(q.length_words) AS words
        FROM {table} q JOIN stat_calls s
          ON s.sweep_id = q.sweep_id AND s.config_id = q.config_id AND s.run_number = q.run_number
         AND s.attempt = q.attempt AND s.stage = 'report'
        WHERE q.sweep_id = ? GROUP BY q.config_id"""
    for r in rows(con, sql, [sweep_id]):
        out[r["config_id"]] = r
    return out


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    row = con.execute(sql, params or []).fetchone()
    return row[0] if row else None
