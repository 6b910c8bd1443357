"""Host as a factor, where the design allows it: a replicate fleet ran every config on every
host, N runs each, so a two-way ANOVA (host x config, type II, on the log of each run's mean)
separates a host effect from a config effect and their interaction. In a split fleet a config
ran on one host: host and config are confounded and no test is made."""

from __future__ import annotations

import math
from collections import defaultdict

import duckdb

from tr111.report.metrics import STAGES
from tr111.stats.inference import Anova, Cell, anova_cells

# (measure, column, which calls): decode rate over every call statistics use, TTFT over warm ones
MEASURES = (("decode rate", "throughput_tps", ""), ("warm TTFT", "ttft_ms", "AND NOT coalesce(c.is_cold, false)"))


def run_values(con: duckdb.DuckDBPyConnection, fleet_id: str, stage: str, column: str,
               which: str) -> list[tuple[str, str, float]]:
    """(host, config, log of the run's geometric mean) for every run of the fleet at a stage."""
    return con.execute(f"""
        SELECT c.host, c.config_id, avg(ln(c.{column}))
        FROM stat_calls c JOIN sweeps s USING (sweep_id)
        WHERE s.fleet_id = ? AND c.stage = ? AND c.{column} > 0 AND c.host IS NOT NULL {which}
        GROUP BY c.sweep_id, c.host, c.config_id, c.run_number""", [fleet_id, stage]).fetchall()


def cells(values: list[tuple[str, str, float]]) -> list[Cell]:
    grouped: dict[tuple, list[float]] = defaultdict(list)
    for host, config, value in values:
        if value is not None and math.isfinite(value):
            grouped[(host, config)].append(value)
    out = []
    for key, vs in sorted(grouped.items()):
        mean = sum(vs) / len(vs)
        out.append(Cell(key, len(vs), mean, sum((v - mean) ** 2 for v in vs)))
    return out


def host_effects(con: duckdb.DuckDBPyConnection, sweep: dict) -> list[dict]:
    """Per stage and measure, the ANOVA of a replicate fleet (empty for any other sweep)."""
    if sweep.get("fleet_mode") != "replicate" or not sweep.get("fleet_id"):
        return []
    out = []
    for stage in STAGES:
        for name, column, which in MEASURES:
            found = cells(run_values(con, sweep["fleet_id"], stage, column, which))
            hosts = {c.levels[0] for c in found}
            if len(hosts) < 2:
                continue
            result: Anova = anova_cells(found, ("host", "config"), f"log {name} ({stage})", max_order=2)
            out.append({"stage": stage, "measure": name, "anova": result, "runs": result.n_obs,
                        "hosts": len(hosts), "host": result.term("host"), "config": result.term("config"),
                        "interaction": result.term("host", "config")})
    return out
