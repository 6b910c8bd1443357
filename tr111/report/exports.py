"""``tr111 export``: a sweep's calls, runs, quality scores and per-config summary as files.

DuckDB writes every format (COPY ... TO, FORMAT CSV / JSON / PARQUET), streaming
from the tr111.warehouse; the summary comes from the same queries as the report.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tr111.report import queries
from tr111.report.render import _sql_path

FORMATS = {"csv": "(FORMAT CSV, HEADER true)", "json": "(FORMAT JSON, ARRAY true)",
           "parquet": "(FORMAT PARQUET)"}
SUMMARY_COLUMNS = (
    ("config_id", "VARCHAR"), ("is_baseline", "BOOLEAN"), ("options_json", "VARCHAR"),
    ("runs", "BIGINT"), ("calls", "BIGINT"), ("total_tokens", "BIGINT"),
    *[(f"{m}_{s}", t) for m in ("tps", "ttft_warm", "ttft_cold", "ttft_all")
      for s, t in (("n", "BIGINT"), ("mean", "DOUBLE"), ("stddev", "DOUBLE"), ("cv_pct", "DOUBLE"),
                   ("ci95_low", "DOUBLE"), ("ci95_high", "DOUBLE"), ("p50", "DOUBLE"), ("p95", "DOUBLE"),
                   ("min", "DOUBLE"), ("max", "DOUBLE"))],
    ("run_tps_n", "BIGINT"), ("run_tps_mean", "DOUBLE"), ("run_tps_sd", "DOUBLE"),
    ("run_warm_ttft_n", "BIGINT"), ("run_warm_ttft_mean", "DOUBLE"), ("run_warm_ttft_sd", "DOUBLE"),
    ("quality_n", "BIGINT"), ("quality_overall", "DOUBLE"),
)


def summary_rows(con: duckdb.DuckDBPyConnection, sweep_id: str) -> list[dict]:
    """One row per config: call-level distributions and run-level means, as in the report."""
    configs = queries.configs(con, sweep_id, [])
    calls = queries.call_stats(con, sweep_id)
    runs = queries.run_stats(con, sweep_id)
    quality = queries.quality_stats(con, sweep_id) if queries.has_table(con, "quality_scores") else {}
    out = []
    for c in configs:
        stats, run, q = calls.get(c["config_id"], {}), runs.get(c["config_id"], {}), quality.get(c["config_id"], {})
        row = {"config_id": c["config_id"], "is_baseline": c["is_baseline"], "options_json": c["options_json"],
               "runs": stats.get("runs", 0), "calls": stats.get("calls", 0),
               "total_tokens": stats.get("total_tokens")}
        for name, key in (("tps", "tps"), ("ttft_warm", "ttft_warm"), ("ttft_cold", "ttft_cold"),
                          ("ttft_all", "ttft")):
            summary = stats.get(key)
            for field in ("n", "mean", "stddev", "cv_pct", "ci95_low", "ci95_high", "p50", "p95", "min", "max"):
                row[f"{name}_{field}"] = getattr(summary, field) if summary is not None else None
        for prefix, key in (("run_tps", "tps"), ("run_warm_ttft", "warm")):
            part = run.get(key) or {}
            row.update({f"{prefix}_n": part.get("n"), f"{prefix}_mean": part.get("mean"),
                        f"{prefix}_sd": part.get("sd")})
        row.update(quality_n=q.get("n"), quality_overall=q.get("overall"))
        out.append(row)
    return out


def export_sweep(con: duckdb.DuckDBPyConnection, sweep_id: str, fmt: str, folder: Path) -> list[Path]:
    """Write llm_calls, runs, quality_scores (when present) and config_summary; returns the files."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    folder.mkdir(parents=True, exist_ok=True)
    options = FORMATS[fmt]
    written = []

    def copy(name: str, sql: str, params: list) -> None:
        target = folder / f"{name}.{fmt}"
        con.execute(f"COPY ({sql}) TO {_sql_path(target)} {options}", params)
        written.append(target)

    copy("llm_calls", "SELECT * FROM llm_calls WHERE sweep_id = ? "
                      "ORDER BY config_id, run_number, stage, attempt", [sweep_id])
    copy("runs", "SELECT * FROM runs WHERE sweep_id = ? ORDER BY config_id, run_number", [sweep_id])
    if queries.has_table(con, "quality_scores"):
        copy("quality_scores", "SELECT * FROM quality_scores WHERE sweep_id = ? "
                               "ORDER BY config_id, run_number, attempt", [sweep_id])
    rows = summary_rows(con, sweep_id)
    names = [n for n, _ in SUMMARY_COLUMNS]
    con.execute("CREATE OR REPLACE TEMP TABLE _export_summary ("
                + ", ".join(f"{n} {t}" for n, t in SUMMARY_COLUMNS) + ")")
    if rows:
        con.executemany(f"INSERT INTO _export_summary VALUES ({', '.join('?' for _ in names)})",
                        [[r[n] for n in names] for r in rows])
    copy("config_summary", "SELECT * FROM _export_summary", [])
    con.execute("DROP TABLE _export_summary")
    return written
