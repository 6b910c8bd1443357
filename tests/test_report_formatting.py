"""tr111.report.formatting: the one place p-values, intervals and changes become text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tr111.report import formatting as f
from tr111.report.summary import ConfigChange, MetricChange, SweepComparison
from tr111.stats.summary import DistributionSummary


@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (float("nan"), "n/a"), (math.inf, "n/a"), (-0.01, "n/a"), (1.5, "n/a"), ("0.5", "n/a"),
    (True, "n/a"), (0, "< 0.0001"), (0.0, "< 0.0001"), (0.00009999, "< 0.0001"), (0.0001, "0.0001"),
    (0.049999, "0.0500"), (0.05, "0.0500"), (1, "1.0000"), (1.0000000001, "1.0000"),
    (np.float64(0.01234), "0.0123"),
])
def test_pvalue(value, text):
    assert f.pvalue(value) == text


@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (float("nan"), "n/a"), (-1.0, "n/a"), (0.0, "< 0.0001"), (0.01234, "= 0.0123"),
])
def test_p_prose_reads_p_equals_or_p_below(value, text):
    assert f.p_prose(value) == text


@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (float("nan"), "n/a"), (-math.inf, "n/a"), (0.0, "+0.00"), (1234.567, "+1,234.57"),
    (-0.5, "-0.50"), (-0.001, "-0.00"), (np.float64(-12.345), "-12.35"),
])
def test_signed_and_signed_pct(value, text):
    assert f.signed(value) == text
    assert f.signed_pct(value) == (text if text == "n/a" else text + "%")


def test_number_interval_ci_level_verdict_cell():
    assert f.number(None) == "n/a" and f.number(float("nan")) == "n/a" and f.number(-1234.5) == "-1,234.50"
    assert f.number(3) == "3" and f.number(2.0, 0) == "2" and f.number("x") == "x"
    assert f.interval((1.0, 2.5), 3) == "[1.000, 2.500]" and f.interval(None) == "n/a"
    assert f.interval((None, None)) == "n/a" and f.interval((1.0, float("nan"))) == "n/a"
    skewed = DistributionSummary.from_values([1.0, 2.0, 3.0])  # a plain t interval: [-0.48, 4.48]
    assert f.ci(skewed) == "[0.46, 7.22]"  # log scale: the geometric mean's, above zero
    assert f.geo(skewed) == "1.82 [0.46, 7.22]" and f.geo(DistributionSummary.from_values([])) == "n/a"
    assert f.ci(DistributionSummary.from_values([1.0])) == "n too small" and f.ci(None) == "n/a"
    assert f.interval((1.0, 2.0), 2, 1) == "n too small" and f.interval((1.0, 2.0), 2, 2) == "[1.00, 2.00]"
    assert f.level(None) == "default" and f.level(0.8) == "0.8" and f.level(512) == "512"
    assert f.verdict(None) == "not tested" and f.verdict(float("nan")) == "not tested"
    assert f.verdict(0.01) == "significant" and f.verdict(0.05) == "not significant"
    assert f.cell("a|b\nc<d") == "a\\|b c&lt;d" and f.cell(None) == ""


def _change(config_id, metric, stage, pct, p, regression=False):
    return MetricChange(config_id=config_id, metric=metric, stage=stage, baseline_mean=1000.0,
                        candidate_mean=1000.0 + pct * 10, change=pct * 10, change_pct=pct, p_value=p, t=None,
                        df=None, hedges_g=None, significant=p is not None and p < 0.05, regression=regression,
                        improvement=False, n_baseline=4, n_candidate=4)


def test_regression_table_rows_and_verdicts():
    rows = (ConfigChange("a", (_change("a", "decode", "analysis", -10.0, 0.00001, True),
                               _change("a", "ttft", "report", 0.5, 0.7))),
            ConfigChange("b", (_change("b", "decode", "report", float("nan"), None),)))
    table = f.regression_table(SweepComparison("s1", "s2", 5.0, 0.05, rows)).splitlines()
    assert table[0] == "| Configuration | Measure | Before → now | Δ% | p | Verdict |"
    assert table[2] == ("| `a` | Decode rate (analysis), tok/s | 1,000.00 → 900.00 | -10.00 | < 0.0001 "
                        "| **REGRESSION** |")
    assert table[3] == "| `a` | Warm TTFT (report), ms | 1,000.00 → 1,005.00 | +0.50 | 0.7000 | no change |"
    assert table[4] == "| `b` | Decode rate (report), tok/s | 1,000.00 → n/a | n/a | n/a | no change |"
    assert rows[0].regression and not rows[1].regression
    assert rows[0].to_dict()["decode_tps"]["analysis"]["change_pct"] == -10.0
    assert f.regression_table(SweepComparison(None, "s2", 5.0, 0.05)).count("\n") == 1  # header only
