"""The report's light statistics (tr111.report.numeric) against scipy, statsmodels and tr111's modules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from oracles.effects import anova, welch_compare
from oracles.regression import detect_regressions
from tr111.stats.inference import Cell, anova_cells, summary, t_ci, welch, welch_from_stats
from tr111.stats.summary import DistributionSummary


def _cells(df: pd.DataFrame, factors: list[str], metric: str = "y") -> list[Cell]:
    out = []
    for levels, group in df.groupby(factors):
        y = group[metric].to_numpy(dtype=float)
        out.append(Cell(tuple(levels), len(y), float(y.mean()), float(((y - y.mean()) ** 2).sum())))
    return out


def _design(rng, *, effect: float, skip: tuple | None = None, runs=(2, 5)) -> pd.DataFrame:
    rows = []
    for g, c, t in itertools.product([60, 80, 120], [256, 1024], [0.6, 0.8]):
        if skip and (g, c, t) == skip:
            continue
        for r in range(1, rng.integers(*runs) + 1):
            y = 100 + (effect if c == 1024 else 0) + (0.7 if (g == 80 and t == 0.8) else 0) + rng.normal(0, 1)
            rows.append(dict(config_id=f"{g}_{c}_{t}", run_number=r, num_gpu=g, num_ctx=c, temperature=t, y=y))
    return pd.DataFrame(rows)


def test_summary_from_aggregates_equals_from_values():
    values = [114.2, 116.9, 112.5, 113.3, 118.0]
    expected = DistributionSummary.from_values(values)
    got = summary(len(values), np.mean(values), np.std(values, ddof=1), np.percentile(values, 50),
                  np.percentile(values, 95), min(values), max(values))
    for field in ("n", "mean", "stddev", "cv_pct", "ci95_low", "ci95_high", "median", "p50", "p95", "min", "max"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-12), field
    low, high = sps.t.interval(0.95, df=4, loc=np.mean(values), scale=sps.sem(values))
    assert t_ci(np.mean(values), np.std(values, ddof=1), 5) == pytest.approx((low, high), rel=1e-12)
    assert t_ci(5.0, None, 1) == (None, None) and t_ci(5.0, 0.0, 3) == (5.0, 5.0)
    assert summary(1, 3.0, None).stddev is None and summary(0).mean is None


@pytest.mark.parametrize("seed", range(6))
def test_welch_matches_scipy_and_effects(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(10, rng.uniform(0.2, 2), rng.integers(2, 8))
    b = rng.normal(11, rng.uniform(0.2, 2), rng.integers(2, 8))
    got = welch(a, b)
    ref = welch_compare(a, b)
    scipy_ref = sps.ttest_ind(a, b, equal_var=False)
    assert got.p_value == pytest.approx(scipy_ref.pvalue, rel=1e-10)
    assert got.t == pytest.approx(scipy_ref.statistic, rel=1e-10)
    for field in ("diff", "diff_pct", "df", "hedges_g", "ci95_low", "ci95_high"):
        assert getattr(got, field) == pytest.approx(getattr(ref, field), rel=1e-9), field
    assert got.significant == ref.significant


def test_welch_degenerate_inputs_are_untested_not_nan():
    assert welch([1.0], [1.0, 2.0]).p_value is None
    constant = welch([2.0, 2.0], [3.0, 3.0])
    assert constant.p_value is None and "constant" in constant.note and constant.diff == -1.0
    assert not constant.significant
    assert welch_from_stats(None, None, 0, 1.0, 0.1, 3).p_value is None


@pytest.mark.parametrize("case", ["balanced", "unbalanced", "incomplete", "no_effect"])
def test_anova_from_cells_equals_statsmodels_type2(case):
    rng = np.random.default_rng({"balanced": 1, "unbalanced": 2, "incomplete": 3, "no_effect": 4}[case])
    runs = (3, 4) if case == "balanced" else (2, 6)
    df = _design(rng, effect=0.0 if case == "no_effect" else 3.0,
                 skip=(60, 256, 0.6) if case == "incomplete" else None, runs=runs)
    factors = ["num_gpu", "num_ctx", "temperature"]
    ref = anova(df, "y", factors)
    got = anova_cells(_cells(df, factors), factors, "y")
    assert got.order == ref.order and got.n_obs == ref.n_obs
    assert got.df_resid == pytest.approx(ref.df_resid)
    assert got.r_squared == pytest.approx(ref.r_squared, rel=1e-9)
    assert len(got.terms) == len(ref.rows)
    for row in ref.rows:
        term = got.term(*row.term.split(":"))
        assert term.df == row.df
        assert term.sum_sq == pytest.approx(row.sum_sq, rel=1e-8, abs=1e-10)
        assert term.f_value == pytest.approx(row.f_value, rel=1e-8, abs=1e-10)
        assert term.p_value == pytest.approx(row.p_value, rel=1e-7, abs=1e-14)
        assert term.partial_eta_sq == pytest.approx(row.partial_eta_sq, rel=1e-8, abs=1e-12)
        assert term.significant == row.significant
    if case == "balanced":
        assert got.term("num_ctx").significant  # the planted effect


def test_anova_degenerate_designs_say_why():
    one_level = pd.DataFrame({"num_ctx": [512] * 4, "temperature": [0.6, 0.6, 0.8, 0.8], "y": [1, 2, 3, 4.0],
                              "config_id": list("aabb"), "run_number": [1, 2, 1, 2]})
    got = anova_cells(_cells(one_level, ["num_ctx", "temperature"]), ["num_ctx", "temperature"], "y")
    assert got.dropped == ("num_ctx",) and got.tested
    flat = anova_cells([Cell((1,), 3, 5.0, 0.0), Cell((2,), 3, 5.0, 0.0)], ["a"], "y")
    assert not flat.tested and "zero variance" in flat.note
    saturated = anova_cells([Cell((1,), 1, 5.0, 0.0), Cell((2,), 1, 6.0, 0.0)], ["a"], "y")
    assert not saturated.tested and "no test possible" in saturated.note


def test_compare_sweeps_equals_detect_regressions(tmp_path):
    """The report/`tr111 compare` rule is tr111.regression.detect_regressions (unit=run)."""
    from datetime import timedelta

    from fixtures_report import POOR_CONFIG, START, build_sweep
    from tr111.report.history import compare_sweeps
    from tr111.warehouse import open_read_only

    path = tmp_path / "wh.duckdb"
    build_sweep(path, "a", seed=1)
    build_sweep(path, "b", seed=2, slow=POOR_CONFIG, started_at=START + timedelta(days=1))
    with open_read_only(path) as con:
        got = compare_sweeps(con, "a", "b", threshold_pct=5.0)
        frames = {s: con.execute("SELECT * FROM stat_calls WHERE sweep_id = ?", [s]).df() for s in "ab"}
    ref = {(c.config_id, c.metric): c for c in detect_regressions(frames["a"], frames["b"], threshold_pct=5.0)}
    for row in got["rows"]:
        for key, metric in (("tps", "throughput_tps"), ("warm", "ttft_ms")):
            expected, change = ref[(row["config_id"], metric)], row[key]
            assert change["change_pct"] == pytest.approx(expected.change_pct, rel=1e-9)
            assert change["p_value"] == pytest.approx(expected.p_value, rel=1e-7)
            assert change["regression"] == expected.regression
            assert change["n_baseline"] == expected.n_baseline
    assert got["flagged"] == [POOR_CONFIG]
    assert math.isclose(ref[(POOR_CONFIG, "throughput_tps")].change_pct, -10.0, abs_tol=2.0)


def test_anova_power_and_size_over_many_simulated_sweeps():
    """A real 3% effect is found every time; a null factor is 'significant' about 5% of the time."""
    rng = np.random.default_rng(11)
    found, false_alarms, trials = 0, 0, 200
    for _ in range(trials):
        cells = []
        for ctx, temp in itertools.product([512, 1024], [0.6, 0.8]):
            y = 100 * (0.97 if ctx == 1024 else 1.0) + rng.normal(0, 0.8, 4)
            cells.append(Cell((ctx, temp), 4, float(y.mean()), float(((y - y.mean()) ** 2).sum())))
        result = anova_cells(cells, ["num_ctx", "temperature"], "y")
        found += result.term("num_ctx").significant
        false_alarms += result.term("temperature").significant
    assert found == trials
    assert false_alarms / trials < 0.10
