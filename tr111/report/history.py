"""Sweep against sweep: nightly regressions (``tr111 compare`` and the report's section) and trends.

Same rule as tr111.regression.detect_regressions with unit="run": per config
and metric, Welch's t-test of the candidate's run means against the
baseline's; a change is a regression when it is significant (p < alpha) and
worse than ``threshold_pct`` (throughput lower, warm TTFT higher). Computed
from per-config run-level sufficient statistics so a million-row tr111.warehouse
never reaches Python row by row; tests check it against detect_regressions.
"""

from __future__ import annotations

from typing import Any

import duckdb

from tr111.report import queries
from tr111.report.analysis import METRICS
from tr111.stats.inference import ALPHA, welch_from_stats


def _change(metric: dict, base: dict | None, cand: dict | None, threshold_pct: float, alpha: float) -> dict:
    base = base or {"n": 0, "mean": None, "sd": None}
    cand = cand or {"n": 0, "mean": None, "sd": None}
    w = welch_from_stats(cand["mean"], cand["sd"], cand["n"], base["mean"], base["sd"], base["n"],
                         alpha=alpha)
    worse = better = False
    if w.diff_pct is not None:
        signed = w.diff_pct if metric["higher_is_better"] else -w.diff_pct
        worse, better = signed < -threshold_pct, signed > threshold_pct
    significant = w.p_value is not None and w.p_value < alpha
    return {"metric": metric, "baseline_mean": w.mean_b, "candidate_mean": w.mean_a,
            "change": w.diff, "change_pct": w.diff_pct, "p_value": w.p_value, "t": w.t, "df": w.df,
            "hedges_g": w.hedges_g, "significant": significant, "regression": significant and worse,
            "improvement": significant and better, "n_baseline": w.n_b, "n_candidate": w.n_a,
            "note": w.note}


def compare_sweeps(con: duckdb.DuckDBPyConnection, baseline_id: str, candidate_id: str, *,
                   threshold_pct: float, alpha: float = ALPHA) -> dict[str, Any]:
    """Per config present in both sweeps: the change of throughput and warm TTFT, and the verdict."""
    base, cand = queries.run_stats(con, baseline_id), queries.run_stats(con, candidate_id)
    common = sorted(set(base) & set(cand))
    rows = []
    for config_id in common:
        changes = {m["key"]: _change(m, base[config_id].get(m["key"]), cand[config_id].get(m["key"]),
                                     threshold_pct, alpha) for m in METRICS}
        rows.append({"config_id": config_id, **changes,
                     "regression": any(c["regression"] for c in changes.values()),
                     "improvement": any(c["improvement"] for c in changes.values())})
    flagged = [r["config_id"] for r in rows if r["regression"]]
    return {"baseline": baseline_id, "candidate": candidate_id, "threshold_pct": threshold_pct,
            "alpha": alpha, "rows": rows, "flagged": flagged,
            "improved": [r["config_id"] for r in rows if r["improvement"]],
            "only_baseline": sorted(set(base) - set(cand)), "only_candidate": sorted(set(cand) - set(base))}


def regression_section(con: duckdb.DuckDBPyConnection, sweep: dict, threshold_pct: float) -> dict:
    """The report's comparison with the previous completed sweep of the same matrix and model."""
    previous = queries.previous_sweep(con, sweep)
    if previous is None:
        return {"previous": None, "threshold_pct": threshold_pct, "flagged": [], "rows": []}
    result = compare_sweeps(con, previous, sweep["sweep_id"], threshold_pct=threshold_pct)
    result["previous"] = previous
    result["previous_started_at"] = queries.scalar(
        con, "SELECT started_at FROM sweeps WHERE sweep_id = ?", [previous])
    return result


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
