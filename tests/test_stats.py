"""Descriptive statistics against hand-computed and scipy values; recommendation tiers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tr111.report.recommend import ConfigSummary, recommendation_tiers
from tr111.stats.summary import DistributionSummary, population_summary, rank_configs


def test_summary_matches_hand_computed_values():
    summary = DistributionSummary.from_values([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert summary.n == 8
    assert summary.mean == pytest.approx(5.0)
    # sum of squared deviations = 32, sample variance = 32/7
    assert summary.stddev == pytest.approx(math.sqrt(32 / 7))
    assert summary.cv_pct == pytest.approx(math.sqrt(32 / 7) / 5.0 * 100)
    assert summary.median == summary.p50 == pytest.approx(4.5)
    assert summary.min == 2.0 and summary.max == 9.0
    assert summary.p95 == pytest.approx(np.percentile([2, 4, 4, 4, 5, 5, 7, 9], 95))


def test_ci_matches_scipy_t_interval():
    values = [114.2, 116.9, 112.5]
    summary = DistributionSummary.from_values(values)
    low, high = sps.t.interval(0.95, df=2, loc=np.mean(values), scale=sps.sem(values))
    assert summary.ci95_low == pytest.approx(low)
    assert summary.ci95_high == pytest.approx(high)
    # hand check: t(0.975, 2) = 4.302653
    half = 4.302653 * np.std(values, ddof=1) / math.sqrt(3)
    assert summary.ci95_half_width == pytest.approx(half, rel=1e-6)


def test_empty_and_single_value_edge_cases():
    empty = DistributionSummary.from_values([])
    assert empty.n == 0
    assert all(getattr(empty, name) is None for name in
               ("mean", "stddev", "cv_pct", "ci95_low", "ci95_high", "median", "p50", "p95", "min", "max"))
    single = DistributionSummary.from_values([3.5])
    assert single.n == 1 and single.mean == 3.5 and single.median == 3.5
    assert single.stddev is None and single.cv_pct is None and single.ci95_low is None


def test_none_and_nan_ignored():
    summary = DistributionSummary.from_values([1.0, None, float("nan"), 3.0, float("inf")])
    assert summary.n == 2
    assert summary.mean == pytest.approx(2.0)
    assert summary.stddev == pytest.approx(math.sqrt(2))


def test_constant_values_have_zero_width_ci():
    summary = DistributionSummary.from_values([5.0, 5.0, 5.0])
    assert summary.stddev == 0.0 and summary.cv_pct == 0.0
    assert summary.ci95_low == summary.ci95_high == 5.0


def test_population_summary_reports_range_and_extremes():
    pop = population_summary({"a": 113.99, "b": 114.98, "c": 114.51, "d": None})
    assert pop.n == 3
    assert pop.mean == pytest.approx((113.99 + 114.98 + 114.51) / 3)
    assert pop.median == pytest.approx(114.51)
    assert pop.range == pytest.approx(0.99)
    assert pop.min_config == "a" and pop.max_config == "b"
    assert pop.cv_pct == pytest.approx(pop.stddev / pop.mean * 100)
    assert population_summary({}).range is None


def test_ranking():
    values = {"a": [10.0, 12.0], "b": [20.0, 22.0], "c": [15.0]}
    groups = {cid: DistributionSummary.from_values(v) for cid, v in values.items()}
    assert groups["a"].mean == 11.0 and groups["c"].n == 1
    ranked = rank_configs(groups, attr="mean", descending=True)
    assert [r.config_id for r in ranked] == ["b", "c", "a"]
    assert ranked[0].rank == 1 and ranked[0].value == 21.0
    by_cv = rank_configs(groups, attr="cv_pct", descending=False)
    assert [r.config_id for r in by_cv] == ["b", "a"]  # c has no CV (n=1)


# --------------------------------------------------------------------------- recommendation tiers


def _summary(cid, tps, ttft, gpu=None, ctx=None):
    return ConfigSummary(cid, DistributionSummary.from_values(tps), DistributionSummary.from_values(ttft),
                         num_gpu=gpu, num_ctx=ctx)


def test_tiers_are_derived_from_data():
    summaries = [
        _summary("fast", [120.0, 121.0, 119.0], [300.0, 310.0, 305.0], gpu=120, ctx=1024),
        _summary("cheap", [119.0, 119.5, 118.5], [302.0, 309.0, 306.0], gpu=60, ctx=256),
        _summary("steady", [110.0, 110.01, 109.99], [250.0, 251.0, 249.0], gpu=80, ctx=512),
        _summary("slowcheap", [90.0, 91.0, 89.0], [200.0, 260.0, 230.0], gpu=40, ctx=256),
    ]
    tiers = {t.key: t for t in recommendation_tiers(summaries, tolerance_pct=2.0)}
    assert tiers["best_throughput"].config_id == "fast"
    assert "120.00 tok/s" in tiers["best_throughput"].rationale
    assert "cheap" in tiers["best_throughput"].rationale  # names the runner-up
    assert tiers["best_warm_ttft"].config_id == "slowcheap"
    assert tiers["most_consistent"].config_id == "steady"
    # slowcheap is cheaper but 25% slower; cheap is within 2% and its TTFT is not significantly worse
    assert tiers["lowest_resource"].config_id == "cheap"
    assert "within 2%" in tiers["lowest_resource"].rationale


def test_lowest_resource_rejects_significantly_worse_ttft():
    summaries = [
        _summary("fast", [120.0, 120.5, 119.5], [300.0, 301.0, 299.0], gpu=120, ctx=1024),
        _summary("cheap_laggy", [119.5, 120.0, 119.0], [400.0, 401.0, 399.0], gpu=60, ctx=256),
    ]
    tiers = {t.key: t for t in recommendation_tiers(summaries)}
    assert tiers["lowest_resource"].config_id == "fast"


def test_tier_welch_p_is_scipy_ttest_ind_from_stats():
    """The p in a tier's rationale is the product's one Welch, equal to scipy's from the same summaries."""
    fast, runner = [120.0, 121.5, 119.0, 120.2], [118.0, 119.0, 118.5]
    tiers = {t.key: t for t in recommendation_tiers([_summary("fast", fast, [300.0, 301.0]),
                                                     _summary("runner", runner, [305.0, 306.0])])}
    a, b = DistributionSummary.from_values(fast), DistributionSummary.from_values(runner)
    ref = sps.ttest_ind_from_stats(a.mean, a.stddev, a.n, b.mean, b.stddev, b.n, equal_var=False)
    assert f"p={ref.pvalue:.3g}, significant" in tiers["best_throughput"].rationale
    tied = recommendation_tiers([_summary("x", [1.0, 1.0], []), _summary("y", [0.5, 0.5], [])])
    assert "no test possible" in tied[0].rationale  # both constant: no variance to test against
