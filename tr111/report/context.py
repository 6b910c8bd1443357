"""Build the report's context from the warehouse: every number comes from recorded rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import duckdb

from warehouse.reader import rows, sweep_row

PARAMS = (("num_gpu", "GPU layers (num_gpu)"), ("num_ctx", "Context size (num_ctx)"),
          ("temperature", "Temperature"))


@dataclass
class ReportContext:
    sweep: dict
    matrix: dict
    configs: list[dict]
    aggregate: list[dict]
    rankings: dict[str, list[dict]]
    sensitivity: list[dict]
    runs: list[dict]
    calls: list[dict]
    problems: list[dict]
    counts: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return self.__dict__


def build_context(con: duckdb.DuckDBPyConnection, sweep_id: str) -> ReportContext:
    sweep = sweep_row(con, sweep_id)
    matrix = json.loads(sweep.get("matrix_json") or "{}")
    configs = rows(con, "SELECT * FROM configs WHERE sweep_id = ? ORDER BY position", [sweep_id])
    aggregate = rows(con, """
        SELECT c.config_id, c.num_gpu, c.num_ctx, c.temperature, c.is_baseline,
               s.calls, s.avg_throughput_tps, s.stddev_throughput_tps, s.cv_throughput_pct,
               s.avg_ttft_ms, s.stddev_ttft_ms, s.cv_ttft_pct, s.total_tokens,
               (SELECT count(*) FROM runs r WHERE r.sweep_id = c.sweep_id
                  AND r.config_id = c.config_id AND r.status = 'ok') AS runs_ok
        FROM configs c LEFT JOIN config_summary s USING (sweep_id, config_id)
        WHERE c.sweep_id = ? ORDER BY c.position""", [sweep_id])
    measured = [a for a in aggregate if a["calls"]]
    rankings = {
        "throughput": sorted(measured, key=lambda a: -(a["avg_throughput_tps"] or 0))[:5],
        "ttft": sorted(measured, key=lambda a: a["avg_ttft_ms"] or float("inf"))[:5],
        "consistency": sorted([a for a in measured if a["cv_throughput_pct"] is not None],
                              key=lambda a: a["cv_throughput_pct"])[:5],
    }
    sensitivity = []
    for column, label in PARAMS:
        levels = rows(con, f"""
            SELECT g.{column} AS level, count(*) AS calls, count(DISTINCT g.config_id) AS configs,
                   avg(c.throughput_tps) AS avg_throughput_tps, avg(c.ttft_ms) AS avg_ttft_ms
            FROM stat_calls c JOIN configs g USING (sweep_id, config_id)
            WHERE c.sweep_id = ? AND NOT g.is_baseline AND g.{column} IS NOT NULL
            GROUP BY g.{column} ORDER BY g.{column}""", [sweep_id])
        if len(levels) >= 2:
            sensitivity.append({"parameter": column, "label": label, "levels": levels,
                                **_deltas(levels)})
    runs = rows(con, "SELECT * FROM runs WHERE sweep_id = ? ORDER BY started_at", [sweep_id])
    calls = rows(con, "SELECT * FROM llm_calls WHERE sweep_id = ? ORDER BY started_at, attempt",
                 [sweep_id])
    problems = rows(con, "SELECT path, kind, detail FROM ingest_problems WHERE sweep_id = ? "
                         "ORDER BY path, kind", [sweep_id])
    counts = {
        "configs": len(configs), "runs": len(runs),
        "runs_ok": sum(r["status"] == "ok" for r in runs),
        "calls_ok": sum(c["status"] == "ok" for c in calls),
        "calls_error": sum(c["status"] == "error" for c in calls),
    }
    return ReportContext(sweep, matrix, configs, aggregate, rankings, sensitivity, runs, calls,
                         problems, counts)


def _deltas(levels: list[dict]) -> dict:
    def spread(key: str) -> tuple[float | None, float | None]:
        values = [lv[key] for lv in levels if lv[key] is not None]
        if len(values) < 2:
            return None, None
        delta = max(values) - min(values)
        mean = sum(values) / len(values)
        return delta, (delta / mean * 100 if mean else None)

    tps, tps_pct = spread("avg_throughput_tps")
    ttft, ttft_pct = spread("avg_ttft_ms")
    return {"delta_throughput_tps": tps, "delta_throughput_pct": tps_pct,
            "delta_ttft_ms": ttft, "delta_ttft_pct": ttft_pct}
