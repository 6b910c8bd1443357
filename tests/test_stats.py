"""Descriptive statistics against hand-computed and scipy values; recommendation tiers (per stage:
ties named and resolved by resource, a truncated config never recommended silently)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tr111.report.recommend import ConfigSummary, by_config, recommendation_tiers
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


def test_ci_is_scipy_t_interval_of_the_logs():
    values = [114.2, 116.9, 112.5]
    summary = DistributionSummary.from_values(values)
    logs = np.log(values)
    low, high = sps.t.interval(0.95, df=2, loc=logs.mean(), scale=sps.sem(logs))
    assert summary.geo_mean == pytest.approx(sps.gmean(values))
    assert summary.ci95_low == pytest.approx(math.exp(low))
    assert summary.ci95_high == pytest.approx(math.exp(high))
    # hand check: t(0.975, 2) = 4.302653, on the log scale
    half = 4.302653 * np.std(logs, ddof=1) / math.sqrt(3)
    assert summary.ci95_high / summary.geo_mean == pytest.approx(math.exp(half), rel=1e-6)
    assert summary.geo_mean / summary.ci95_low == pytest.approx(math.exp(half), rel=1e-6)


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
    assert summary.ci95_low == pytest.approx(5.0) and summary.ci95_high == pytest.approx(5.0)


def test_values_at_or_below_zero_get_no_geometric_mean_and_no_interval():
    summary = DistributionSummary.from_values([0.0, 2.0, 4.0])
    assert summary.mean == 2.0 and summary.geo_mean is None
    assert summary.ci95_low is None and summary.ci95_high is None


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


def _summary(cid, tps, ttft, gpu=None, ctx=None, truncated=0, report_ttft=None):
    """The same values in both stages unless ``report_ttft``; ``truncated`` analysis calls."""
    d = DistributionSummary.from_values
    return ConfigSummary(cid, {"analysis": d(tps), "report": d(tps)},
                         {"analysis": d(ttft), "report": d(report_ttft if report_ttft is not None else ttft)},
                         truncated={"analysis": truncated, "report": 0}, num_gpu=gpu, num_ctx=ctx)


def test_tiers_are_derived_from_data_and_name_the_ties():
    summaries = [
        _summary("fast", [120.0, 121.0, 119.0], [300.0, 310.0, 305.0], gpu=120, ctx=1024),
        _summary("cheap", [119.0, 119.5, 118.5], [302.0, 309.0, 306.0], gpu=60, ctx=256),
        _summary("steady", [110.0, 110.01, 109.99], [250.0, 251.0, 249.0], gpu=80, ctx=512),
        _summary("slowcheap", [90.0, 91.0, 89.0], [200.0, 202.0, 201.0], gpu=40, ctx=256),
    ]
    tiers = {t.key: t for t in recommendation_tiers(summaries, tolerance_pct=2.0)}
    for stage in ("analysis", "report"):
        best = tiers[f"best_decode_{stage}"]
        # fast is highest, cheap is statistically tied with it and uses fewer GPU layers: cheap is chosen
        assert best.config_id == "cheap" and best.tied == ("fast",)
        assert "fast has the highest geometric-mean decode rate" in best.rationale
        assert "statistically tied" in best.rationale and "chose cheap, the lowest-resource" in best.rationale
        assert tiers[f"best_ttft_{stage}"].config_id == "slowcheap"
        assert tiers[f"best_ttft_{stage}"].tied == ()  # significantly faster than the runner-up
    assert "p=" in tiers["best_ttft_analysis"].rationale and "significant" in tiers["best_ttft_analysis"].rationale
    assert tiers["most_consistent"].config_id == "steady"
    # slowcheap is cheaper but 25% slower; cheap is within 2% and its TTFT is not significantly worse
    assert tiers["lowest_resource"].config_id == "cheap"
    assert "within 2%" in tiers["lowest_resource"].rationale


def test_the_same_best_for_several_metrics_is_said_once():
    summaries = [_summary("a", [120.0, 121.0, 119.5], [100.0, 101.0, 100.5], gpu=60, ctx=256),
                 _summary("b", [100.0, 101.0, 99.5], [200.0, 201.0, 200.5], gpu=60, ctx=512)]
    groups = by_config(recommendation_tiers(summaries))
    assert [g["config_id"] for g in groups] == ["a"]
    assert {t.key for t in groups[0]["tiers"]} == {"best_decode_analysis", "best_decode_report",
                                                   "best_ttft_analysis", "best_ttft_report", "most_consistent",
                                                   "lowest_resource"}


def test_a_truncated_config_is_never_recommended_silently():
    # "short" answered a truncated analysis prompt: its TTFT is a third of the others'
    summaries = [_summary("short", [121.0, 121.5, 120.5], [100.0, 101.0, 99.0], gpu=60, ctx=256, truncated=3),
                 _summary("full", [120.0, 120.5, 119.5], [300.0, 301.0, 299.0], gpu=80, ctx=1024),
                 _summary("full2", [110.0, 110.5, 109.5], [310.0, 311.0, 309.0], gpu=120, ctx=1024)]
    tiers = recommendation_tiers(summaries)
    assert all(t.config_id != "short" for t in tiers)
    for t in tiers:
        assert "not considered: short (⚠ truncated prompt, analysis)" in t.rationale, t.key
    assert {t.key: t.config_id for t in tiers}["best_ttft_analysis"] == "full"
    # every config truncated: a pick is made, with a loud caveat
    alone = recommendation_tiers([summaries[0]])
    assert alone[0].config_id == "short" and alone[0].caveat and "truncated" in alone[0].caveat


def test_lowest_resource_rejects_significantly_worse_ttft():
    summaries = [
        _summary("fast", [120.0, 120.5, 119.5], [300.0, 301.0, 299.0], gpu=120, ctx=1024),
        _summary("cheap_laggy", [119.5, 120.0, 119.0], [400.0, 401.0, 399.0], gpu=60, ctx=256),
    ]
    tiers = {t.key: t for t in recommendation_tiers(summaries)}
    assert tiers["lowest_resource"].config_id == "fast"


def test_tier_welch_p_is_scipy_ttest_of_the_logs():
    """The p in a tier's rationale is the product's one Welch on logs, equal to scipy's."""
    fast, runner = [120.0, 121.5, 119.0, 120.2], [118.0, 119.0, 118.5]
    tiers = {t.key: t for t in recommendation_tiers([_summary("fast", fast, [300.0, 301.0]),
                                                     _summary("runner", runner, [305.0, 306.0])])}
    ref = sps.ttest_ind(np.log(fast), np.log(runner), equal_var=False)
    assert f"p={ref.pvalue:.3g}, significant" in tiers["best_decode_report"].rationale
    tied = recommendation_tiers([_summary("x", [1.0, 1.0], []), _summary("y", [0.5, 0.5], [])])
    assert "no test possible" in tied[0].rationale  # both constant: no variance to test against
