"""The product's statistics (tr111.stats) against scipy.stats, statsmodels and tests/oracles.

Each formula runs on balanced, unbalanced and incomplete designs: equal and
unequal group sizes, missing values, single observations and missing cells.
The interval of a positive quantity is the log-scale t interval (scipy's t
interval of the logs, back-transformed); on skewed data it never goes below zero.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from oracles import effects as oracle
from oracles.agree import assert_anova_agrees, assert_welch_agrees, cells
from oracles.regression import STAGE_METRICS, detect_regressions
from tr111.stats.inference import (Cell, anova_cells, hedges_g, log_summary, log_welch_from_stats, summary, welch,
                                   welch_from_stats)
from tr111.stats.summary import DistributionSummary, bounded_t_ci, log_t_ci, t_ci


def scipy_log_interval(values, confidence=0.95):
    """The oracle of log_t_ci: scipy's t interval of the logs, back-transformed."""
    logs = np.log(values)
    low, high = sps.t.interval(confidence, df=len(logs) - 1, loc=logs.mean(), scale=sps.sem(logs))
    return float(np.exp(low)), float(np.exp(high))


def _design(rng, *, effect: float, skip: tuple = (), runs=(2, 5), interaction: float = 0.7) -> pd.DataFrame:
    """3x2x2 factorial with a main effect of num_ctx and a num_gpu:temperature interaction."""
    rows = []
    for g, c, t in itertools.product([60, 80, 120], [256, 1024], [0.6, 0.8]):
        if (g, c, t) in skip:
            continue
        for r in range(1, rng.integers(*runs) + 1):
            y = (100 + (effect if c == 1024 else 0) + (interaction if (g == 80 and t == 0.8) else 0)
                 + rng.normal(0, 1))
            rows.append(dict(config_id=f"{g}_{c}_{t}", run_number=r, num_gpu=g, num_ctx=c, temperature=t, y=y))
    return pd.DataFrame(rows)


def test_summary_from_aggregates_equals_from_values():
    values = [114.2, 116.9, 112.5, 113.3, 118.0]
    expected = DistributionSummary.from_values(values)
    logs = np.log(values)
    got = summary(len(values), np.mean(values), np.std(values, ddof=1), np.percentile(values, 50),
                  np.percentile(values, 95), min(values), max(values), logs.mean(), logs.std(ddof=1))
    for field in ("n", "mean", "stddev", "cv_pct", "ci95_low", "ci95_high", "median", "p50", "p95", "min", "max",
                  "geo_mean", "log_sd"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-12), field
    assert got.geo_mean == pytest.approx(sps.gmean(values), rel=1e-12)
    assert (got.ci95_low, got.ci95_high) == pytest.approx(scipy_log_interval(values), rel=1e-12)
    no_logs = summary(len(values), np.mean(values), np.std(values, ddof=1))  # a column with a value <= 0
    assert no_logs.geo_mean is None and no_logs.ci95_low is None and no_logs.ci95_high is None
    low, high = sps.t.interval(0.95, df=4, loc=np.mean(values), scale=sps.sem(values))
    assert t_ci(np.mean(values), np.std(values, ddof=1), 5) == pytest.approx((low, high), rel=1e-12)
    assert t_ci(5.0, None, 1) == (None, None) and t_ci(5.0, 0.0, 3) == (5.0, 5.0)
    assert summary(1, 3.0, None).stddev is None and summary(0).mean is None


def _samples(design: str, seed: int) -> tuple[list, list]:
    """Two samples: equal sizes, unequal sizes and spreads, or with gaps (None, NaN, inf)."""
    rng = np.random.default_rng(seed)
    if design == "balanced":
        n_a = n_b = int(rng.integers(2, 9))
    else:
        n_a, n_b = int(rng.integers(2, 5)), int(rng.integers(6, 30))
    a = list(rng.normal(10, rng.uniform(0.2, 2), n_a))
    b = list(rng.normal(11, rng.uniform(0.05, 4), n_b))
    if design == "incomplete":
        a += [None, float("nan")]
        b.insert(1, float("inf"))
    return a, b


@pytest.mark.parametrize("design", ["balanced", "unbalanced", "incomplete"])
@pytest.mark.parametrize("seed", range(5))
def test_welch_and_hedges_g_match_scipy_and_oracle(design, seed):
    a, b = _samples(design, seed)
    got = welch(a, b)
    assert_welch_agrees(got, oracle.welch_compare(a, b))
    clean_a, clean_b = [v for v in a if v is not None and np.isfinite(v)], [v for v in b if np.isfinite(v)]
    scipy_ref = sps.ttest_ind(clean_a, clean_b, equal_var=False)
    assert got.p_value == pytest.approx(scipy_ref.pvalue, rel=1e-10)
    assert got.t == pytest.approx(scipy_ref.statistic, rel=1e-10)
    ci = scipy_ref.confidence_interval(0.95)
    assert (got.ci95_low, got.ci95_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    sa, sb = DistributionSummary.from_values(a), DistributionSummary.from_values(b)
    from_stats = welch_from_stats(sa.mean, sa.stddev, sa.n, sb.mean, sb.stddev, sb.n)
    ref_stats = sps.ttest_ind_from_stats(sa.mean, sa.stddev, sa.n, sb.mean, sb.stddev, sb.n, equal_var=False)
    assert from_stats.p_value == pytest.approx(ref_stats.pvalue, rel=1e-10)
    assert from_stats.hedges_g == pytest.approx(oracle.hedges_g(clean_a, clean_b), rel=1e-10)
    assert hedges_g(sa.mean, sa.stddev, sa.n, sb.mean, sb.stddev, sb.n) == got.hedges_g


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 2.0]), ([], [3.0, 4.0]), ([2.0, 2.0], [3.0, 3.0, None]),
                                  ([5.0, float("nan")], [1.0, 2.0, 3.0]), ([], [])])
def test_welch_untestable_designs_agree_with_oracle(a, b):
    got = welch(a, b)
    assert_welch_agrees(got, oracle.welch_compare(a, b))
    assert got.p_value is None and got.note and not got.significant


@pytest.mark.parametrize("n", [2, 3, 7, 50])
@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_t_interval_matches_scipy(n, confidence):
    values = list(np.random.default_rng(n).normal(100, 5, n))
    mean, sd = np.mean(values), np.std(values, ddof=1)
    low, high = sps.t.interval(confidence, df=n - 1, loc=mean, scale=sps.sem(values))
    assert t_ci(mean, sd, n, confidence) == pytest.approx((low, high), rel=1e-12)
    logs = np.log(values)
    expected = scipy_log_interval(values, confidence)
    assert log_t_ci(logs.mean(), logs.std(ddof=1), n, confidence) == pytest.approx(expected, rel=1e-12)
    if confidence == 0.95:
        for got in (DistributionSummary.from_values(values + [None, float("nan")]),
                    summary(n, mean, sd, log_mean=logs.mean(), log_sd=logs.std(ddof=1)),
                    log_summary(n, logs.mean(), logs.std(ddof=1))):
            assert (got.ci95_low, got.ci95_high) == pytest.approx(expected, rel=1e-12)


SKEWED = {  # positive, skewed data where a plain t interval of the mean goes below zero
    "bimodal_ttft": [84.0, 30.0, 2100.0, 31.0, 86.0, 29.5, 12000.0, 83.0],  # the two stages pooled
    "two_values": [5.0, 900.0],
    "lognormal": list(np.random.default_rng(3).lognormal(3.0, 2.0, 6)),
    "one_outlier": [0.8, 0.9, 1.0, 0.85, 400.0],
}


@pytest.mark.parametrize("case", sorted(SKEWED))
def test_no_interval_of_skewed_positive_data_goes_below_zero(case):
    values = SKEWED[case]
    plain_low, _ = sps.t.interval(0.95, df=len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert plain_low < 0  # the trap the log scale avoids
    got = DistributionSummary.from_values(values)
    assert 0 < got.ci95_low <= got.geo_mean <= got.ci95_high
    assert (got.ci95_low, got.ci95_high) == pytest.approx(scipy_log_interval(values), rel=1e-12)
    from tr111.stats.summary import population_summary

    pop = population_summary({str(i): v for i, v in enumerate(values)})
    assert pop.ci95_low > 0


def test_too_few_values_give_no_interval_and_the_report_says_so():
    from tr111.report.formatting import TOO_SMALL, ci, interval

    one = DistributionSummary.from_values([1234.5])
    assert one.geo_mean == pytest.approx(1234.5) and one.ci95_low is None and ci(one) == TOO_SMALL
    assert ci(DistributionSummary.from_values([])) == TOO_SMALL and interval((0.1, 0.2), 3, 1) == TOO_SMALL
    assert log_t_ci(1.0, None, 1) == (None, None) and log_t_ci(1.0, 0.0, 3) == (math.e, math.e)


def test_bounded_interval_of_scores_stays_in_zero_one():
    low, high = bounded_t_ci(0.5, 0.5657, 2)  # scores 0.1 and 0.9: the t interval spans [-4.6, 5.6]
    assert (low, high) == (0.0, 1.0)
    ref = sps.t.interval(0.95, df=3, loc=0.8, scale=0.05 / 2)
    assert bounded_t_ci(0.8, 0.05, 4) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_log_welch_is_scipy_welch_of_the_logs(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.lognormal(5.0, 0.1, 4), rng.lognormal(5.1, 0.3, 3)
    la, lb = np.log(a), np.log(b)
    got = log_welch_from_stats(la.mean(), la.std(ddof=1), len(a), lb.mean(), lb.std(ddof=1), len(b))
    ref = sps.ttest_ind(la, lb, equal_var=False)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-10) and got.t == pytest.approx(ref.statistic, rel=1e-10)
    assert got.mean_a == pytest.approx(sps.gmean(a)) and got.mean_b == pytest.approx(sps.gmean(b))
    assert got.diff_pct == pytest.approx((sps.gmean(a) / sps.gmean(b) - 1) * 100, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (got.ci95_low, got.ci95_high) == pytest.approx(((np.exp(ci.low) - 1) * 100, (np.exp(ci.high) - 1) * 100))
    assert got.scale == "log" and got.hedges_g == pytest.approx(oracle.hedges_g(list(la), list(lb)), rel=1e-10)


def test_t_interval_of_incomplete_samples_is_none_not_nan():
    assert t_ci(5.0, None, 1) == (None, None) and t_ci(None, None, 0) == (None, None)
    assert t_ci(5.0, 0.0, 3) == (5.0, 5.0)
    for values, n in (([], 0), ([4.0], 1), ([None, 4.0, float("nan")], 1)):
        got = DistributionSummary.from_values(values)
        assert (got.n, got.ci95_low, got.ci95_high) == (n, None, None)


def test_welch_degenerate_inputs_are_untested_not_nan():
    assert welch([1.0], [1.0, 2.0]).p_value is None
    constant = welch([2.0, 2.0], [3.0, 3.0])
    assert constant.p_value is None and "constant" in constant.note and constant.diff == -1.0
    assert not constant.significant
    assert welch_from_stats(None, None, 0, 1.0, 0.1, 3).p_value is None


ANOVA_CASES = {  # seed, runs per cell, skipped cells, planted effects (ctx main effect, gpu:temp interaction)
    "balanced": (1, (3, 4), (), 3.0, 0.7),
    "unbalanced": (2, (2, 6), (), 3.0, 0.7),
    "incomplete": (3, (2, 6), ((60, 256, 0.6),), 3.0, 0.7),
    "incomplete_two_cells": (5, (2, 5), ((60, 256, 0.6), (120, 1024, 0.8)), 3.0, 0.7),
    "incomplete_corner": (6, (3, 4), ((60, 256, 0.6), (60, 256, 0.8), (60, 1024, 0.6)), 3.0, 0.7),
    "no_effect": (4, (2, 6), (), 0.0, 0.0),
    "interaction": (7, (3, 4), (), 0.0, 4.0),
}


@pytest.mark.parametrize("case", sorted(ANOVA_CASES))
@pytest.mark.parametrize("factors", [["num_gpu", "num_ctx", "temperature"], ["num_gpu", "temperature"]])
def test_anova_from_cells_equals_statsmodels_type2(case, factors):
    seed, runs, skip, effect, interaction = ANOVA_CASES[case]
    df = _design(np.random.default_rng(seed), effect=effect, skip=skip, runs=runs, interaction=interaction)
    ref = oracle.anova(df, "y", factors)
    got = anova_cells(cells(df, factors, "y"), factors, "y")
    assert ref.tested
    assert_anova_agrees(got, ref)
    if case in ("balanced", "unbalanced") and "num_ctx" in factors:
        assert got.term("num_ctx").significant  # the planted main effect
    if case == "interaction":
        assert got.term("num_gpu", "temperature").significant  # the planted interaction
    if case.startswith("incomplete") and len(factors) == 3:
        assert got.order < 3 and "fell back" in got.note  # a missing cell: no 3-way term


def test_anova_degenerate_designs_say_why():
    one_level = pd.DataFrame({"num_ctx": [512] * 4, "temperature": [0.6, 0.6, 0.8, 0.8], "y": [1, 2, 3, 4.0],
                              "config_id": list("aabb"), "run_number": [1, 2, 1, 2]})
    got = anova_cells(cells(one_level, ["num_ctx", "temperature"], "y"), ["num_ctx", "temperature"], "y")
    assert got.dropped == ("num_ctx",) and got.tested
    assert_anova_agrees(got, oracle.anova(one_level, "y", ["num_ctx", "temperature"]))
    flat = anova_cells([Cell((1,), 3, 5.0, 0.0), Cell((2,), 3, 5.0, 0.0)], ["a"], "y")
    assert not flat.tested and "zero variance" in flat.note
    saturated = anova_cells([Cell((1,), 1, 5.0, 0.0), Cell((2,), 1, 6.0, 0.0)], ["a"], "y")
    assert not saturated.tested and "no test possible" in saturated.note


def test_compare_sweeps_equals_detect_regressions(tmp_path):
    """The report/`tr111 compare` rule is oracles.regression.detect_regressions per stage, on logs."""
    from datetime import timedelta

    from fixtures_report import POOR_CONFIG, START, build_sweep
    from tr111.report.history import compare_sweeps
    from tr111.warehouse import open_read_only

    path = tmp_path / "wh.duckdb"
    build_sweep(path, "a", seed=1, stages=True)
    build_sweep(path, "b", seed=2, slow=POOR_CONFIG, started_at=START + timedelta(days=1), stages=True)
    with open_read_only(path) as con:
        got = compare_sweeps(con, "a", "b", threshold_pct=5.0)
        frames = {s: con.execute("SELECT * FROM stat_calls WHERE sweep_id = ?", [s]).df() for s in "ab"}
    ref = {(c.config_id, c.metric): c for c in detect_regressions(frames["a"], frames["b"], threshold_pct=5.0,
                                                                  metrics=STAGE_METRICS)}
    column = {"decode": "throughput_tps", "ttft": "ttft_ms"}
    for row in got.rows:
        assert len(row.changes) == 4
        for change in row.changes:
            expected = ref[(row.config_id, f"{column[change.metric]}:{change.stage}")]
            assert change.change_pct == pytest.approx(expected.change_pct, rel=1e-9)
            assert change.baseline_mean == pytest.approx(expected.baseline_mean, rel=1e-9)
            assert change.p_value == pytest.approx(expected.p_value, rel=1e-7)
            assert change.regression == expected.regression
            assert change.n_baseline == expected.n_baseline
    assert got.flagged == [POOR_CONFIG]
    assert math.isclose(ref[(POOR_CONFIG, "throughput_tps:report")].change_pct, -10.0, abs_tol=2.0)


def test_anova_power_and_size_over_many_simulated_sweeps():
    """A real 3% effect is found every time; a null factor is 'significant' about 5% of the time."""
    rng = np.random.default_rng(11)
    found, false_alarms, trials = 0, 0, 200
    for _ in range(trials):
        sweep = []
        for ctx, temp in itertools.product([512, 1024], [0.6, 0.8]):
            y = 100 * (0.97 if ctx == 1024 else 1.0) + rng.normal(0, 0.8, 4)
            sweep.append(Cell((ctx, temp), 4, float(y.mean()), float(((y - y.mean()) ** 2).sum())))
        result = anova_cells(sweep, ["num_ctx", "temperature"], "y")
        found += result.term("num_ctx").significant
        false_alarms += result.term("temperature").significant
    assert found == trials
    assert false_alarms / trials < 0.10
