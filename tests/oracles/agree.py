"""Run the product's statistics (tr111.stats.inference) on the data an oracle saw, and assert agreement.

Why a module: test_report_stats, test_effects and test_regression all check the
product against the statsmodels/scipy oracles on their own designs; one set of
helpers keeps those checks identical (same fields, same tolerances).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import pytest

from oracles.effects import AnovaResult, Comparison, observations
from oracles.regression import DEFAULT_METRICS, RUN_KEY, ConfigChange, MetricRule, _observations
from tr111.stats.inference import Anova, Cell, anova_cells, regression_verdict, welch

WELCH_FIELDS = ("n_a", "n_b", "mean_a", "mean_b", "diff", "diff_pct", "t", "df", "p_value", "hedges_g",
                "ci95_low", "ci95_high")


def cells(obs: pd.DataFrame, factors: Sequence[str], metric: str) -> list[Cell]:
    """Observations grouped into the product's cells (count, mean, sum of squared deviations)."""
    out = []
    for levels, group in obs.groupby(list(factors)):
        y = group[metric].to_numpy(dtype=float)
        out.append(Cell(tuple(levels), len(y), float(y.mean()), float(((y - y.mean()) ** 2).sum())))
    return out


def product_anova(df: pd.DataFrame, metric: str, factors: Sequence[str], *, exclude_cold: bool = False,
                  max_order: int = 3) -> Anova:
    """anova_cells on the rows oracles.effects.anova uses (run means, baseline excluded)."""
    obs = observations(df, metric, factors, exclude_cold=exclude_cold)
    present = [f for f in factors if f in obs.columns]
    return anova_cells(cells(obs, present, metric), present, metric, max_order=max_order)


def assert_anova_agrees(got: Anova, ref: AnovaResult) -> None:
    """Same model order, residual df, R², and per term the same df, SS, F, p, eta² and verdict."""
    assert got.tested == ref.tested, (got.note, ref.note)
    assert got.order == ref.order and got.n_obs == ref.n_obs
    assert set(got.factors) == set(ref.params) and set(got.dropped) == set(ref.dropped_params)
    if not ref.tested:
        return
    assert got.df_resid == pytest.approx(ref.df_resid)
    assert got.r_squared == pytest.approx(ref.r_squared, rel=1e-9)
    assert len(got.terms) == len(ref.rows)
    for row in ref.rows:
        term = got.term(*row.term.split(":"))
        assert term is not None, row.term
        assert term.df == row.df, row.term
        assert term.sum_sq == pytest.approx(row.sum_sq, rel=1e-8, abs=1e-10), row.term
        assert term.f_value == pytest.approx(row.f_value, rel=1e-8, abs=1e-10), row.term
        assert term.p_value == pytest.approx(row.p_value, rel=1e-7, abs=1e-14), row.term
        assert term.partial_eta_sq == pytest.approx(row.partial_eta_sq, rel=1e-8, abs=1e-12), row.term
        assert term.significant == row.significant, row.term


def assert_welch_agrees(got: Comparison, ref: Comparison) -> None:
    """Every field of the product's Welch equals the oracle's (None where the oracle says untested)."""
    for field in WELCH_FIELDS:
        expected = getattr(ref, field)
        if expected is None:
            assert getattr(got, field) is None, field
        else:
            assert getattr(got, field) == pytest.approx(expected, rel=1e-9, abs=1e-12), field
    assert got.significant == ref.significant
    assert (got.note is None) == (ref.note is None)


def _ids(df: pd.DataFrame) -> set[str]:
    return set(df["config_id"].dropna().astype(str)) if "config_id" in df.columns else set()


def product_changes(baseline: pd.DataFrame, candidate: pd.DataFrame, *, threshold_pct: float = 5.0,
                    alpha: float = 0.05, metrics: Sequence[MetricRule] = DEFAULT_METRICS
                    ) -> dict[tuple[str, str], tuple]:
    """(config, metric) -> (product Welch, product verdict) on the run means detect_regressions tests."""
    out = {}
    for rule in metrics:
        base, cand = (_observations(df, rule, "run", RUN_KEY) for df in (baseline, candidate))
        for config_id in sorted(_ids(baseline) & _ids(candidate)):
            values = [df.loc[df["config_id"].astype(str) == config_id, rule.metric].tolist()
                      if len(df) else [] for df in (cand, base)]
            comparison = welch(*values, alpha=alpha)
            out[(config_id, rule.metric)] = (comparison, regression_verdict(
                comparison, higher_is_better=rule.higher_is_better, threshold_pct=threshold_pct, alpha=alpha))
    return out


def assert_changes_agree(got: dict[tuple[str, str], tuple], ref: Sequence[ConfigChange]) -> None:
    """The product's regression rule flags exactly what the oracle flags, with the same numbers."""
    assert set(got) == {(c.config_id, c.metric) for c in ref}
    for change in ref:
        comparison, verdict = got[(change.config_id, change.metric)]
        assert (verdict.significant, verdict.regression, verdict.improvement) == \
            (change.significant, change.regression, change.improvement), change
        assert (comparison.n_b, comparison.n_a) == (change.n_baseline, change.n_candidate)
        pairs = ((comparison.diff_pct, change.change_pct), (comparison.p_value, change.p_value),
                 (comparison.hedges_g, change.hedges_g), (comparison.mean_b, change.baseline_mean))
        for mine, theirs in pairs:
            assert (mine is None) == (theirs is None), change
            if theirs is not None:
                assert mine == pytest.approx(theirs, rel=1e-9), change
