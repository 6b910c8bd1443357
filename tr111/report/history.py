"""Sweep against sweep: nightly regressions (``tr111 compare`` and the report's section) and trends.

Per config and metric, Welch's t-test of the candidate's run means against the
baseline's; the verdict is tr111.stats.inference.regression_verdict (significant,
p < alpha, and worse than ``threshold_pct``: throughput lower, warm TTFT higher).
Computed from per-config run-level sufficient statistics so a million-row warehouse
never reaches Python row by row; tests check it against the statsmodels/scipy
oracle tests/oracles/regression.py.
"""

from __future__ import annotations

from dataclasses import replace

import duckdb

from tr111.report import queries
from tr111.report.analysis import METRICS
from tr111.report.summary import ConfigChange, MetricChange, SweepComparison
from tr111.stats.inference import ALPHA, regression_verdict, welch_from_stats


def _change(metric: dict, base: dict | None, cand: dict | None, threshold_pct: float, alpha: float) -> dict:
    base = base or {"n": 0, "mean": None, "sd": None}
    cand = cand or {"n": 0, "mean": None, "sd": None}
    w = welch_from_stats(cand["mean"], cand["sd"], cand["n"], base["mean"], base["sd"], base["n"],
                         alpha=alpha)
    verdict = regression_verdict(w, higher_is_better=metric["higher_is_better"],
                                 threshold_pct=threshold_pct, alpha=alpha)
    return {"metric": metric, "baseline_mean": w.mean_b, "candidate_mean": w.mean_a,
            "change": w.diff, "change_pct": w.diff_pct, "p_value": w.p_value, "t": w.t, "df": w.df,
            "hedges_g": w.hedges_g, "significant": verdict.significant, "regression": verdict.regression,
            "improvement": verdict.improvement, "n_baseline": w.n_b, "n_candidate": w.n_a,
            "note": w.note}


def compare_sweeps(con: duckdb.DuckDBPyConnection, baseline_id: str, candidate_id: str, *,
                   threshold_pct: float, alpha: float = ALPHA) -> SweepComparison:
    """Per config present in both sweeps: the change of throughput and warm TTFT, and the verdict."""
    base, cand = queries.run_stats(con, baseline_id), queries.run_stats(con, candidate_id)
    rows = []
    for config_id in sorted(set(base) & set(cand)):
        changes = {m["key"]: MetricChange.from_change(config_id, m["key"], _change(
            m, base[config_id].get(m["key"]), cand[config_id].get(m["key"]), threshold_pct, alpha))
            for m in METRICS}
        rows.append(ConfigChange(config_id=config_id, **changes))
    return SweepComparison(baseline=baseline_id, candidate=candidate_id, threshold_pct=threshold_pct,
                           alpha=alpha, rows=tuple(rows), only_baseline=tuple(sorted(set(base) - set(cand))),
                           only_candidate=tuple(sorted(set(cand) - set(base))))


def regression_section(con: duckdb.DuckDBPyConnection, sweep: dict, threshold_pct: float) -> SweepComparison:
    """The report's comparison with the previous completed sweep of the same matrix and model."""
    previous = queries.previous_sweep(con, sweep)
    if previous is None:
        return SweepComparison(baseline=None, candidate=sweep["sweep_id"], threshold_pct=threshold_pct,
                               alpha=ALPHA)
    result = compare_sweeps(con, previous, sweep["sweep_id"], threshold_pct=threshold_pct)
    return replace(result, baseline_started_at=queries.scalar(
        con, "SELECT started_at FROM sweeps WHERE sweep_id = ?", [previous]))


def trend_section(con: duckdb.DuckDBPyConnection, sweep: dict, limit: int = 14) -> dict:
    """Mean throughput and warm TTFT per config over the sweeps of the same matrix (oldest first)."""
    sweeps = queries.same_matrix_sweeps(con, sweep, limit)
    if len(sweeps) < 2:
        return {"sweeps": sweeps, "series": {}, "available": False}
    points = queries.trend(con, [s["sweep_id"] for s in sweeps])
    order = {s["sweep_id"]: i for i, s in enumerate(sweeps)}
    series: dict[str, dict[str, list]] = {}
    for p in sorted(points, key=lambda p: (p["config_id"], order[p["sweep_id"]])):
        entry = series.setdefault(p["config_id"], {"index": [], "tps": [], "warm": []})
        entry["index"].append(order[p["sweep_id"]])
        entry["tps"].append(p["tps"])
        entry["warm"].append(p["warm"])
    per_sweep = {}
    for p in points:
        agg = per_sweep.setdefault(p["sweep_id"], {"tps": [], "warm": []})
        if p["tps"] is not None:
            agg["tps"].append(p["tps"])
        if p["warm"] is not None:
            agg["warm"].append(p["warm"])
    for s in sweeps:
        agg = per_sweep.get(s["sweep_id"], {"tps": [], "warm": []})
        s["configs"] = len(agg["tps"])
        s["tps"] = sum(agg["tps"]) / len(agg["tps"]) if agg["tps"] else None
        s["warm"] = sum(agg["warm"]) / len(agg["warm"]) if agg["warm"] else None
    return {"sweeps": sweeps, "series": series, "available": True}
