"""Oracle sanity and product agreement on fixtures with planted effects.

The oracles (oracles.effects: statsmodels ANOVA, scipy Welch) must find what
was planted, or the product-vs-oracle checks would compare against nonsense;
each design is then also run through the product (tr111.stats.inference),
which must agree term by term.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from oracles.agree import assert_anova_agrees, assert_welch_agrees, product_anova
from oracles.effects import PARAMS, anova, cell_means, hedges_g, observations, sensitivity, welch_compare
from tr111.stats.inference import welch

GPUS, CTXS, TEMPS, RUNS = (60, 80, 120), (256, 512, 1024), (0.6, 0.8), (1, 2, 3)


def _design(throughput, seed=7, calls_per_run=1, with_baseline=True):
    """3x3x2 design, 3 runs per cell. Noise for temp 0.8 mirrors temp 0.6 in the same
    (gpu, ctx, run), so any temperature effect is exactly zero unless planted."""
    rng = np.random.default_rng(seed)
    noise = {(g, c, r, k): rng.normal(0.0, 1.0) for g in GPUS for c in CTXS for r in RUNS
             for k in range(calls_per_run)}
    rows = []
    for g in GPUS:
        for c in CTXS:
            for t in TEMPS:
                for r in RUNS:
                    for k in range(calls_per_run):
                        rows.append(dict(
                            config_id=f"gpu{g}_ctx{c}_temp{t}", num_gpu=g, num_ctx=c, temperature=t,
                            run_number=r, stage=("analysis", "report")[k % 2],
                            throughput_tps=throughput(g, c, t) + noise[(g, c, r, k)],
                            ttft_ms=500.0 + noise[(g, c, r, k)], is_cold=False,
                        ))
    if with_baseline:
        for r in RUNS:  # wildly different defaults must not leak into the factor analysis
            rows.append(dict(config_id="baseline_default", num_gpu=np.nan, num_ctx=np.nan,
                             temperature=np.nan, run_number=r, stage="analysis",
                             throughput_tps=10.0, ttft_ms=9000.0, is_cold=False))
    return pd.DataFrame(rows)


def gpu_effect(g, c, t):
    return 100.0 + 5.0 * GPUS.index(g)


def test_anova_finds_planted_main_effect_and_not_the_null_one():
    result = anova(_design(gpu_effect), "throughput_tps")
    assert result.note is None
    assert result.anova_type == "II" and result.order == 3 and result.n_obs == 54
    gpu, temp = result.row("num_gpu"), result.row("temperature")
    assert gpu.significant and gpu.p_value < 1e-10 and gpu.partial_eta_sq > 0.9
    assert gpu.df == 2 and result.row("num_ctx").df == 2
    assert not temp.significant and temp.p_value > 0.5
    assert result.row("num_ctx:num_gpu").df == 4  # order of factors in the name is irrelevant
    assert {r.term for r in result.interactions} == {
        "num_gpu:num_ctx", "num_gpu:temperature", "num_ctx:temperature", "num_gpu:num_ctx:temperature"}
    assert result.df_resid == 36
    assert_anova_agrees(product_anova(_design(gpu_effect), "throughput_tps", PARAMS), result)


def test_anova_finds_planted_interaction():
    def crossing(g, c, t):  # more GPU layers only help with a large context
        return 100.0 + (8.0 * GPUS.index(g) if c == 1024 else 0.0)

    result = anova(_design(crossing), "throughput_tps")
    interaction = result.row("num_gpu:num_ctx")
    assert interaction.significant and interaction.p_value < 1e-6
    assert not result.row("num_gpu:temperature").significant
    assert not result.row("num_gpu:num_ctx:temperature").significant
    assert "num_gpu:num_ctx" in result.significant_terms
    assert_anova_agrees(product_anova(_design(crossing), "throughput_tps", PARAMS), result)
    table = cell_means(_design(crossing), "throughput_tps", "num_gpu", "num_ctx")
    assert table.loc[120, 1024] - table.loc[60, 1024] == pytest.approx(16.0, abs=2.0)


def test_anova_unit_call_with_block_factor():
    df = _design(gpu_effect, calls_per_run=2)
    df.loc[df["stage"] == "report", "throughput_tps"] += 3.0
    result = anova(df, "throughput_tps", unit="call", block="stage")
    assert result.n_obs == 108
    assert result.row("stage").significant and result.row("num_gpu").significant
    assert "C(stage)" in result.formula and "throughput_tps ~" in result.formula
    averaged = anova(df, "throughput_tps")  # default: per-run means
    assert averaged.n_obs == 54


def test_anova_falls_back_when_design_is_incomplete():
    df = _design(gpu_effect, with_baseline=False)
    df = df[df["run_number"] == 1]  # one observation per cell: the 3-way term has no residual df
    # independent noise per row (the mirrored fixture noise would make order 2 an exact fit)
    df = df.assign(throughput_tps=df["throughput_tps"] + np.random.default_rng(11).normal(0, 1, len(df)))
    result = anova(df, "throughput_tps")
    assert result.order == 2 and result.row("num_gpu:num_ctx:temperature") is None
    assert "fell back" in result.note and result.df_resid > 0
    assert_anova_agrees(product_anova(df, "throughput_tps", PARAMS), result)


def test_anova_drops_single_level_params():
    df = _design(gpu_effect)
    df = df[df["temperature"].isna() | (df["temperature"] == 0.6)]
    result = anova(df, "throughput_tps")
    assert result.params == ("num_gpu", "num_ctx") and result.dropped_params == ("temperature",)
    assert result.row("temperature") is None and result.row("num_gpu").significant
    assert "temperature" in result.note
    assert_anova_agrees(product_anova(df, "throughput_tps", PARAMS), result)


@pytest.mark.parametrize("mutate, expected", [
    (lambda df: df.assign(ttft_ms=500.0), "zero variance"),
    (lambda df: df.head(2), "no test possible"),
    (lambda df: df[df["config_id"] == "baseline_default"], "no parameter"),
    (lambda df: df.drop(columns=["ttft_ms"]), "no column"),
])
def test_anova_degenerate_input_returns_note(mutate, expected):
    result = anova(mutate(_design(gpu_effect)), "ttft_ms")
    assert not result.tested and result.rows == ()
    assert expected in result.note
    got = product_anova(mutate(_design(gpu_effect)), "ttft_ms", PARAMS)
    assert not got.tested and got.terms == () and "no test possible" in got.note


def test_anova_confounded_params_returns_note():
    df = pd.DataFrame({"config_id": ["a", "a", "b", "b"], "run_number": [1, 2, 1, 2],
                       "num_gpu": [60, 60, 80, 80], "num_ctx": [256, 256, 512, 512],
                       "temperature": [0.6] * 4, "throughput_tps": [1.0, 1.1, 2.0, 2.1]})
    result = anova(df, "throughput_tps")
    assert not result.tested and "rank-deficient" in result.note
    got = product_anova(df, "throughput_tps", PARAMS)
    assert not got.tested and "rank-deficient" in got.note


def test_sensitivity_excludes_baseline_and_reports_deltas():
    df = _design(gpu_effect)
    result = {s.param: s for s in sensitivity(df, "throughput_tps", anova_result=anova(df, "throughput_tps"))}
    gpu = result["num_gpu"]
    assert [lv.level for lv in gpu.levels] == [60, 80, 120]
    assert [lv.n for lv in gpu.levels] == [18, 18, 18] and gpu.levels[0].n_configs == 6
    obs = observations(df, "throughput_tps")
    means = obs.groupby("num_gpu")["throughput_tps"].mean()
    assert gpu.delta_abs == pytest.approx(means.max() - means.min())
    assert gpu.delta_pct == pytest.approx((means.max() - means.min()) / means.min() * 100)
    assert gpu.best_level == 120 and gpu.significant
    assert result["temperature"].delta_abs == pytest.approx(0.0, abs=1e-9)
    assert result["temperature"].significant is False
    assert all(lv.mean > 50 for s in result.values() for lv in s.levels)  # baseline (10 tok/s) excluded


def test_sensitivity_can_drop_cold_calls():
    df = _design(gpu_effect)
    df.loc[df["run_number"] == 1, "is_cold"] = True
    df.loc[df["run_number"] == 1, "ttft_ms"] = 5000.0
    warm = {s.param: s for s in sensitivity(df, "ttft_ms", exclude_cold=True)}
    assert all(lv.mean < 600 for lv in warm["num_gpu"].levels)


def test_welch_matches_scipy():
    a, b = [114.2, 116.9, 112.5, 115.0], [110.1, 111.4, 109.8]
    result = welch_compare(a, b)
    reference = sps.ttest_ind(a, b, equal_var=False)
    assert result.t == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert result.df == pytest.approx(reference.df)
    ci = reference.confidence_interval(0.95)
    assert (result.ci95_low, result.ci95_high) == pytest.approx((ci.low, ci.high))
    assert result.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert result.diff_pct == pytest.approx((np.mean(a) - np.mean(b)) / np.mean(b) * 100)
    assert result.significant == (reference.pvalue < 0.05)
    # Welch–Satterthwaite df by hand
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    assert result.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2))
    assert_welch_agrees(welch(a, b), result)


def test_hedges_g_sign_and_magnitude():
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 1.0, 200)
    shifted = base + 1.0  # same spread, shift of exactly one sd of the sample
    g = welch_compare(shifted, base).hedges_g
    sd = np.std(base, ddof=1)
    assert g == pytest.approx(1.0 / sd * (1 - 3 / (4 * 400 - 9)), rel=1e-9)
    assert welch_compare(base, shifted).hedges_g == pytest.approx(-g)
    assert hedges_g([1.0], [2.0, 3.0]) is None
    assert welch(shifted, base).hedges_g == pytest.approx(g, rel=1e-12)
    assert welch(base[:7], shifted[:150]).hedges_g == pytest.approx(hedges_g(base[:7], shifted[:150]), rel=1e-12)


def test_welch_degenerate_inputs():
    single = welch_compare([1.0], [2.0, 3.0])
    assert single.p_value is None and not single.significant and ">= 2" in single.note
    constant = welch_compare([5.0, 5.0], [5.0, 5.0, None])
    assert constant.p_value is None and "constant" in constant.note and constant.n_b == 2
    assert welch_compare([], []).mean_a is None
    for a, b in (([1.0], [2.0, 3.0]), ([5.0, 5.0], [5.0, 5.0, None]), ([], [])):
        assert_welch_agrees(welch(a, b), welch_compare(a, b))


def test_anova_exact_fit_returns_note_instead_of_nan():
    df = _design(gpu_effect, with_baseline=False)
    df = df[df["run_number"] == 1]  # mirrored noise: the gpu x ctx model reproduces every value
    result = anova(df, "throughput_tps")
    assert not result.tested and "residual variance is zero" in result.note
    got = product_anova(df, "throughput_tps", PARAMS)
    assert not got.tested and "residual variance is zero" in got.note
