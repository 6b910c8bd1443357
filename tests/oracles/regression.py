"""Test oracle for the regression rule (scipy Welch, pandas, statsmodels multipletests).

The product's rule is tr111.stats.inference.regression_verdict; this is the
independent version the tests compare it with, candidate batch vs baseline
batch, per config.

Test choice: Welch's t-test. The real case is n=3 runs per side, where
Mann–Whitney cannot reach p < 0.05 at all (its smallest two-sided p for 3 vs 3
is 0.1), so a rank test would never flag anything. Welch does not assume equal
variances and, with run-level noise of ~1-2%, resolves a 10% shift at n=3.

A change is a *regression* only when it is both significant (p < alpha) and
worse than ``threshold_pct`` (throughput lower, warm TTFT higher); the
threshold keeps statistically real but practically irrelevant drifts (e.g. a
2% shift measured very precisely) from paging anyone. Improvements mirror it.
Optionally p-values are adjusted for the number of tests (``correction``
is any statsmodels ``multipletests`` method, e.g. "holm" or "fdr_bh").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from oracles.effects import welch_compare


@dataclass(frozen=True)
class MetricRule:
    """Which column to compare, whether higher is better, whether to keep only warm calls;
    ``stage``: only that stage's calls; ``log``: test the logs of the run means (the change is
    then the ratio of geometric means - 1, the product's rule for times and rates)."""

    metric: str
    higher_is_better: bool
    warm_only: bool
    stage: str | None = None
    log: bool = False

    @property
    def key(self) -> str:
        return self.metric if self.stage is None else f"{self.metric}:{self.stage}"


DEFAULT_METRICS = (
    MetricRule("throughput_tps", higher_is_better=True, warm_only=False),
    MetricRule("ttft_ms", higher_is_better=False, warm_only=True),
)
# what the report and `tr111 compare` check (tr111.report.metrics.CHECKED): per stage, on logs
STAGE_METRICS = tuple(
    MetricRule(metric, higher, warm, stage=stage, log=True)
    for metric, higher, warm in (("throughput_tps", True, False), ("ttft_ms", False, True))
    for stage in ("analysis", "report"))
RUN_KEY = ("config_id", "run_number")


@dataclass(frozen=True)
class ConfigChange:
    """Baseline -> candidate change of one metric for one config.

    ``change_pct`` = (candidate - baseline) / baseline * 100, so negative means
    slower throughput or faster TTFT. ``p_value`` is Welch's (adjusted when a
    correction was requested; the raw value is in ``p_raw``).
    """

    config_id: str
    metric: str
    baseline_mean: float | None
    candidate_mean: float | None
    change_pct: float | None
    p_value: float | None
    significant: bool
    regression: bool
    improvement: bool
    n_baseline: int
    n_candidate: int
    p_raw: float | None = None
    hedges_g: float | None = None
    note: str | None = None


def _observations(frame: pd.DataFrame, rule: MetricRule, unit: str, run_key: Sequence[str]) -> pd.DataFrame:
    """Rows for one metric: warm-only if asked, averaged per run when unit='run'."""
    if rule.metric not in frame.columns:
        return frame.iloc[0:0]
    rows = frame
    if rule.stage is not None and "stage" in rows.columns:
        rows = rows[rows["stage"] == rule.stage]
    if rule.warm_only and "is_cold" in rows.columns:
        rows = rows[~rows["is_cold"].fillna(False).astype(bool)]
    rows = rows.assign(**{rule.metric: pd.to_numeric(rows[rule.metric], errors="coerce")})
    rows = rows.dropna(subset=[rule.metric])
    if unit == "run" and set(run_key) <= set(rows.columns):
        rows = rows.groupby(list(run_key), as_index=False, sort=True)[rule.metric].mean()
    elif unit not in ("run", "call"):
        raise ValueError(f"unit must be 'run' or 'call', not {unit!r}")
    if rule.log:
        rows = rows.assign(**{rule.metric: np.log(rows[rule.metric].where(rows[rule.metric] > 0))})
    return rows


def detect_regressions(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    *,
    threshold_pct: float = 5.0,
    alpha: float = 0.05,
    metrics: Sequence[MetricRule] = DEFAULT_METRICS,
    unit: str = "run",
    run_key: Sequence[str] = RUN_KEY,
    correction: str | None = None,
) -> list[ConfigChange]:
    """Compare every config present in both batches on each metric (Welch, see module doc).

    ``unit="run"`` (default) averages calls within a run first, since runs are
    the independent replicates; pass ``unit="call"`` to test calls directly. If
    the baseline pools several nights, include the night/batch column in
    ``run_key`` so runs from different nights are not merged. Results are
    ordered by config_id, then metric order.
    """
    configs = sorted(set(baseline.get("config_id", pd.Series(dtype=object)).dropna().astype(str))
                     & set(candidate.get("config_id", pd.Series(dtype=object)).dropna().astype(str)))
    pending: list[dict] = []
    for rule in metrics:
        base_obs = _observations(baseline, rule, unit, run_key)
        cand_obs = _observations(candidate, rule, unit, run_key)
        for config_id in configs:
            base_vals = base_obs.loc[base_obs["config_id"].astype(str) == config_id, rule.metric].tolist() \
                if len(base_obs) else []
            cand_vals = cand_obs.loc[cand_obs["config_id"].astype(str) == config_id, rule.metric].tolist() \
                if len(cand_obs) else []
            comparison = welch_compare(cand_vals, base_vals, alpha=alpha)
            pending.append(dict(config_id=config_id, rule=rule, comparison=comparison))

    raw = [item["comparison"].p_value for item in pending]
    adjusted = list(raw)
    if correction:
        tested = [i for i, p in enumerate(raw) if p is not None]
        if tested:
            _, p_adj, _, _ = multipletests([raw[i] for i in tested], alpha=alpha, method=correction)
            for i, p in zip(tested, p_adj):
                adjusted[i] = float(p)

    order = {rule.key: i for i, rule in enumerate(metrics)}
    changes = [
        _change(item["config_id"], item["rule"], item["comparison"], p, threshold_pct, alpha)
        for item, p in zip(pending, adjusted)
    ]
    changes.sort(key=lambda c: (c.config_id, order[c.metric]))  # c.metric is the rule's key
    return changes


def _change(config_id: str, rule: MetricRule, comparison, p_value: float | None,
            threshold_pct: float, alpha: float) -> ConfigChange:
    change_pct = comparison.diff_pct  # candidate relative to baseline
    base_mean, cand_mean = comparison.mean_b, comparison.mean_a
    if rule.log:  # the comparison is of logs: back to geometric means and a ratio
        change_pct = (np.exp(comparison.diff) - 1.0) * 100.0 if comparison.diff is not None else None
        base_mean = float(np.exp(base_mean)) if base_mean is not None else None
        cand_mean = float(np.exp(cand_mean)) if cand_mean is not None else None
    significant = p_value is not None and p_value < alpha
    worse = better = False
    if change_pct is not None:
        signed = change_pct if rule.higher_is_better else -change_pct  # > 0 means better
        worse = signed < -threshold_pct
        better = signed > threshold_pct
    return ConfigChange(
        config_id=config_id,
        metric=rule.key,
        baseline_mean=base_mean,
        candidate_mean=cand_mean,
        change_pct=change_pct,
        p_value=p_value,
        significant=significant,
        regression=significant and worse,
        improvement=significant and better,
        n_baseline=comparison.n_b,
        n_candidate=comparison.n_a,
        p_raw=comparison.p_value,
        hedges_g=comparison.hedges_g,
        note=comparison.note,
    )


def regressions_only(changes: Sequence[ConfigChange]) -> list[ConfigChange]:
    """The flagged regressions, worst relative change first."""
    flagged = [c for c in changes if c.regression]
    return sorted(flagged, key=lambda c: -abs(c.change_pct or 0.0))
