"""``tr111 export``: a sweep's calls, runs, quality scores and per-config summary as files.

DuckDB writes every format (COPY ... TO, FORMAT CSV / JSON / PARQUET), streaming
from the tr111.warehouse; config_summary and summary.json come from the report's
own context and SweepSummary, so they hold the report's numbers.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tr111.report import queries
from tr111.report.context import ReportContext, build_context
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


def summary_rows(ctx: ReportContext) -> list[dict]:
    """One row per config: call-level distributions and run-level means, as in the report."""
    quality = {q["config_id"]: q for q in ctx.quality["rows"]}
    out = []
    for e in ctx.entries:
        q = quality.get(e["config_id"], {})
        row = {k: e[k] for k in ("config_id", "is_baseline", "options_json", "runs", "calls", "total_tokens")}
        for name, key in (("tps", "tps"), ("ttft_warm", "ttft_warm"), ("ttft_cold", "ttft_cold"),
                          ("ttft_all", "ttft")):
            for field in ("n", "mean", "stddev", "cv_pct", "ci95_low", "ci95_high", "p50", "p95", "min", "max"):
                row[f"{name}_{field}"] = getattr(e[key], field)
        for prefix, key in (("run_tps", "run_tps"), ("run_warm_ttft", "run_warm")):
            part = e[key] or {}
            row.update({f"{prefix}_n": part.get("n"), f"{prefix}_mean": part.get("mean"),
                        f"{prefix}_sd": part.get("sd")})
        row.update(quality_n=q.get("n"), quality_overall=q.get("overall"))
        out.append(row)
    return out


def export_sweep(con: duckdb.DuckDBPyConnection, sweep_id: str, fmt: str, folder: Path, *,
                 threshold_pct: float | None = None) -> list[Path]:
    """Write llm_calls, runs, quality_scores (when present), config_summary and summary.json
    (the report's SweepSummary); returns the files."""
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
    ctx = build_context(con, sweep_id, threshold_pct=threshold_pct)
    rows = summary_rows(ctx)
    names = [n for n, _ in SUMMARY_COLUMNS]
    con.execute("CREATE OR REPLACE TEMP TABLE _export_summary ("
                + ", ".join(f"{n} {t}" for n, t in SUMMARY_COLUMNS) + ")")
    if rows:
        con.executemany(f"INSERT INTO _export_summary VALUES ({', '.join('?' for _ in names)})",
                        [[r[n] for n in names] for r in rows])
    copy("config_summary", "SELECT * FROM _export_summary", [])
    con.execute("DROP TABLE _export_summary")
    target = folder / "summary.json"
    target.write_text(ctx.summary.to_json(), encoding="utf-8")
    written.append(target)
    return written
