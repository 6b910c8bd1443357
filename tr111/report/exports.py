"""``tr111 export``: a sweep's calls, runs, quality scores and summaries as files.

DuckDB writes every format (COPY ... TO, FORMAT CSV / JSON / PARQUET), streaming
from the tr111.warehouse; config_summary (per config), stage_summary (per config
and stage) and summary.json come from the report's own context and SweepSummary,
so they hold the report's numbers.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tr111.report import queries
from tr111.report.context import ReportContext, build_context
from tr111.report.render import _sql_path

FORMATS = {"csv": "(FORMAT CSV, HEADER true)", "json": "(FORMAT JSON, ARRAY true)",
           "parquet": "(FORMAT PARQUET)"}
DIST = (("n", "BIGINT"), ("mean", "DOUBLE"), ("geo_mean", "DOUBLE"), ("stddev", "DOUBLE"), ("cv_pct", "DOUBLE"),
        ("ci95_low", "DOUBLE"), ("ci95_high", "DOUBLE"), ("p50", "DOUBLE"), ("p95", "DOUBLE"), ("min", "DOUBLE"),
        ("max", "DOUBLE"))
SUMMARY_COLUMNS = (  # per config: counts, TR111's pooled figures (for comparison), quality
    ("config_id", "VARCHAR"), ("is_baseline", "BOOLEAN"), ("options_json", "VARCHAR"),
    ("runs", "BIGINT"), ("calls", "BIGINT"), ("truncated_calls", "BIGINT"), ("total_tokens", "BIGINT"),
    *[(f"{m}_{s}", t) for m in ("tr111_tps_all_calls", "tr111_ttft_all_calls") for s, t in DIST],
    ("quality_n", "BIGINT"), ("quality_overall", "DOUBLE"),
)
STAGE_DISTS = (("decode_tps", "decode"), ("prefill_tps", "prefill"), ("warm_ttft", "ttft"),
               ("cold_ttft", "ttft_cold"))
STAGE_COLUMNS = (  # per config and stage: what sections 4-6 print; run_* are logs of the run means
    ("config_id", "VARCHAR"), ("stage", "VARCHAR"), ("calls", "BIGINT"), ("warm_calls", "BIGINT"),
    ("cold_calls", "BIGINT"), ("truncated_calls", "BIGINT"), ("prompt_tokens", "DOUBLE"),
    ("warm_load_ms", "DOUBLE"), ("warm_prefill_ms", "DOUBLE"), ("warm_client_overhead_ms", "DOUBLE"),
    *[(f"{name}_{s}", t) for name, _ in STAGE_DISTS for s, t in DIST],
    *[(f"run_log_{key}_{s}", t) for key in ("decode", "prefill", "ttft")
      for s, t in (("n", "BIGINT"), ("mean", "DOUBLE"), ("sd", "DOUBLE"))],
)


def _dist(prefix: str, d) -> dict:
    return {f"{prefix}_{field}": getattr(d, field) for field, _ in DIST}


def summary_rows(ctx: ReportContext) -> list[dict]:
    """One row per config: counts, TR111's pooled figures and quality, as in the report."""
    quality = {q["config_id"]: q for q in ctx.quality["rows"]}
    out = []
    for e in ctx.entries:
        q = quality.get(e["config_id"], {})
        row = {k: e[k] for k in ("config_id", "is_baseline", "options_json", "runs", "calls", "total_tokens")}
        row.update(truncated_calls=e["truncated"], **_dist("tr111_tps_all_calls", e["study_tps"]),
                   **_dist("tr111_ttft_all_calls", e["study_ttft"]), quality_n=q.get("n"),
                   quality_overall=q.get("overall"))
        out.append(row)
    return out


def stage_rows(ctx: ReportContext) -> list[dict]:
    """One row per config and stage: the per-stage distributions and run-level log statistics."""
    out = []
    for e in ctx.entries:
        for stage, st in e["stages"].items():
            row = {"config_id": e["config_id"], "stage": stage, "calls": st["calls"],
                   "warm_calls": st["warm_calls"], "cold_calls": st["cold_calls"], "truncated_calls": st["truncated"],
                   "prompt_tokens": st["prompt_tokens"], "warm_load_ms": st["load_ms"],
                   "warm_prefill_ms": st["prefill_ms"], "warm_client_overhead_ms": st["overhead_ms"]}
            for name, key in STAGE_DISTS:
                row.update(_dist(name, st[key]))
            for key in ("decode", "prefill", "ttft"):
                part = e["run"].get(f"{key}_{stage}") or {}
                row.update({f"run_log_{key}_{s}": part.get(s) for s in ("n", "mean", "sd")})
            out.append(row)
    return out


def export_sweep(con: duckdb.DuckDBPyConnection, sweep_id: str, fmt: str, folder: Path, *,
                 threshold_pct: float | None = None) -> list[Path]:
    """Write llm_calls, runs, quality_scores (when present), config_summary, stage_summary and
    summary.json (the report's SweepSummary); returns the files."""
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
    for name, columns, rows in (("config_summary", SUMMARY_COLUMNS, summary_rows(ctx)),
                                ("stage_summary", STAGE_COLUMNS, stage_rows(ctx))):
        names = [n for n, _ in columns]
        con.execute("CREATE OR REPLACE TEMP TABLE _export_summary ("
                    + ", ".join(f"{n} {t}" for n, t in columns) + ")")
        if rows:
            con.executemany(f"INSERT INTO _export_summary VALUES ({', '.join('?' for _ in names)})",
                            [[r[n] for n in names] for r in rows])
        copy(name, "SELECT * FROM _export_summary", [])
        con.execute("DROP TABLE _export_summary")
    target = folder / "summary.json"
    target.write_text(ctx.summary.to_json(), encoding="utf-8")
    written.append(target)
    return written
