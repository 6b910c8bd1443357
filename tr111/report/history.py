"""Sweep against sweep: nightly regressions (``tr111 compare`` and the report's section) and trends.

Per config, stage and metric (decode rate and warm TTFT of the analysis and of
the report call: metrics.CHECKED), Welch's t-test of the logs of the
candidate's run means against the baseline's (a change of a time or a rate is a
ratio); the verdict is tr111.stats.inference.regression_verdict (significant,
p < alpha, and worse than ``threshold_pct``: decode rate lower, warm TTFT higher).
Computed from per-config run-level sufficient statistics so a million-row warehouse
never reaches Python row by row; tests check it against the statsmodels/scipy
oracle tests/oracles/regression.py.
"""

from __future__ import annotations

from dataclasses import replace

import duckdb

from tr111.report import queries
from tr111.report.metrics import CHECKED, Measure
from tr111.report.summary import ConfigChange, MetricChange, SweepComparison
from tr111.stats.inference import ALPHA, log_welch_from_stats, regression_verdict


def _change(measure: Measure, base: dict | None, cand: dict | None, threshold_pct: float, alpha: float) -> dict:
    base = base or {"n": 0, "mean": None, "sd": None}
    cand = cand or {"n": 0, "mean": None, "sd": None}
    w = log_welch_from_stats(cand["mean"], cand["sd"], cand["n"], base["mean"], base["sd"], base["n"],
                             alpha=alpha)
    reason = None
    if measure.metric.same_prompt and (base.get("truncated") or cand.get("truncated")):
        # a truncated prompt in either sweep: the TTFTs answer different prompts
        reason = "truncated prompt in " + " and ".join(
            name for name, side in (("the baseline", base), ("the candidate", cand)) if side.get("truncated"))
    elif (measure.metric.key == "ttft" and base.get("clock") and cand.get("clock")
          and base["clock"] != cand["clock"]):
        # stamped at the socket in one sweep and around the HTTP client in the other: the
        # difference would be the clock's (~1-2 ms), not the server's
        reason = (f"TTFT clocks differ (baseline: {base['clock']}, candidate: {cand['clock']}; "
                  "docs/performance.md section 7)")
    if reason:  # no verdict
        w = replace(w, t=None, df=None, p_value=None, ci95_low=None, ci95_high=None, significant=False,
                    note=f"⚠ {reason}: TTFT not compared")
    verdict = regression_verdict(w, higher_is_better=measure.higher_is_better,
                                 threshold_pct=threshold_pct, alpha=alpha)
    return {"baseline_mean": w.mean_b, "candidate_mean": w.mean_a,
            "change": w.diff, "change_pct": w.diff_pct, "p_value": w.p_value, "t": w.t, "df": w.df,
            "hedges_g": w.hedges_g, "significant": verdict.significant, "regression": verdict.regression,
            "improvement": verdict.improvement, "n_baseline": w.n_b, "n_candidate": w.n_a,
            "note": w.note}


def compare_sweeps(con: duckdb.DuckDBPyConnection, baseline_id: str, candidate_id: str, *,
                   threshold_pct: float, alpha: float = ALPHA) -> SweepComparison:
    """Per config present in both sweeps: the change of each checked measure, and the verdict."""
    base, cand = queries.run_stats(con, baseline_id), queries.run_stats(con, candidate_id)
    rows = []
    for config_id in sorted(set(base) & set(cand)):
        changes = tuple(MetricChange.from_change(config_id, m, _change(
            m, base[config_id].get(m.key), cand[config_id].get(m.key), threshold_pct, alpha)) for m in CHECKED)
        rows.append(ConfigChange(config_id=config_id, changes=changes))
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
    """Geometric-mean decode rate and warm TTFT per config and stage over the sweeps of the same
    matrix (oldest first); per sweep, the mean of those over configs."""
    sweeps = queries.same_matrix_sweeps(con, sweep, limit)
    if len(sweeps) < 2:
        return {"sweeps": sweeps, "series": {}, "available": False, "measures": CHECKED}
    points = queries.trend(con, [s["sweep_id"] for s in sweeps])
    order = {s["sweep_id"]: i for i, s in enumerate(sweeps)}
    series: dict[str, dict[str, list]] = {}
    per_sweep: dict[str, dict[str, list]] = {}
    for p in sorted(points, key=lambda p: (p["config_id"], order[p["sweep_id"]], p["stage"])):
        entry = series.setdefault(p["config_id"], {m.key: {"index": [], "values": []} for m in CHECKED})
        agg = per_sweep.setdefault(p["sweep_id"], {m.key: [] for m in CHECKED})
        for m in CHECKED:
            if m.stage == p["stage"] and p[m.metric.key] is not None:
                entry[m.key]["index"].append(order[p["sweep_id"]])
                entry[m.key]["values"].append(p[m.metric.key])
                agg[m.key].append(p[m.metric.key])
    for s in sweeps:
        agg = per_sweep.get(s["sweep_id"], {m.key: [] for m in CHECKED})
        s["configs"] = len({p["config_id"] for p in points if p["sweep_id"] == s["sweep_id"]})
        s["means"] = {key: (sum(v) / len(v) if v else None) for key, v in agg.items()}
    return {"sweeps": sweeps, "series": series, "available": True, "measures": CHECKED}
