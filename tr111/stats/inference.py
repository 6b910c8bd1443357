"""The report's statistics on sufficient statistics (n, mean, sum of squares), not raw rows.

Why not scipy.stats / statsmodels directly: importing them costs ~70 MB and
~150 MB of memory, and the report must stay under ~150 MB on a warehouse of a
million calls. So DuckDB aggregates (count, avg, stddev, var_pop) and these
functions finish the job with numpy and scipy.special (the same t and F
distribution functions scipy.stats calls). This module is the product's only
Welch, Hedges' g, ANOVA and regression rule (intervals: summary.t_ci and
summary.log_t_ci); the tests check each against scipy.stats, statsmodels and
tests/oracles on balanced, unbalanced and incomplete designs.

Times and rates are tested on the log scale (log_welch_from_stats, ANOVA of log
run means): their effects are multiplicative (a slower server adds a percentage,
not a constant), and the log makes their skewed run means closer to normal.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from tr111.stats.summary import Comparison, DistributionSummary, cv_pct, log_t_ci, t_quantile

ALPHA = 0.05


def finite(value: Any) -> float | None:
    """A finite float, or None (None, NaN, inf, bools and non-numbers are gaps, not values)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _log_sd(n: int, log_sd: Any) -> float | None:
    sd = finite(log_sd) if n >= 2 else None
    return 0.0 if sd is not None and sd < 1e-9 else sd  # float noise of a constant column


def summary(n: Any, mean: Any = None, stddev: Any = None, p50: Any = None, p95: Any = None,
            minimum: Any = None, maximum: Any = None, log_mean: Any = None,
            log_sd: Any = None) -> DistributionSummary:
    """A DistributionSummary from SQL aggregates (count, avg, stddev_samp, quantile_cont, min, max,
    and avg / stddev_samp of ln(x), given only when every value is > 0).

    The same fields DistributionSummary.from_values computes from the raw values.
    """
    n = int(n or 0)
    if n == 0:
        return DistributionSummary.from_values([])
    mean_f = finite(mean)
    sd = finite(stddev) if n >= 2 else None
    if sd is not None and sd < 1e-9 * abs(mean_f or 0.0):  # float noise of a constant column
        sd = 0.0
    lmean = finite(log_mean)
    lsd = _log_sd(n, log_sd) if lmean is not None else None
    low, high = log_t_ci(lmean, lsd, n)
    median = finite(p50)
    return DistributionSummary(n=n, mean=mean_f, stddev=sd, cv_pct=cv_pct(mean_f, sd), ci95_low=low,
                               ci95_high=high, median=median, p50=median, p95=finite(p95),
                               min=finite(minimum), max=finite(maximum),
                               geo_mean=math.exp(lmean) if lmean is not None else None, log_sd=lsd)


def log_summary(n: Any, log_mean: Any, log_sd: Any) -> DistributionSummary:
    """Geometric mean and its interval from observations already on the log scale (log run means)."""
    return summary(n, log_mean=log_mean, log_sd=log_sd)


# --------------------------------------------------------------------------- Welch


Welch = Comparison  # the same dataclass as the oracle tests/oracles/effects.welch_compare returns


def hedges_g(mean_a, sd_a, n_a, mean_b, sd_b, n_b) -> float | None:
    """(a - b) / pooled sd x (1 - 3 / (4 (n_a + n_b) - 9)); None when undefined."""
    if n_a < 2 or n_b < 2 or sd_a is None or sd_b is None:
        return None
    pooled = ((n_a - 1) * sd_a ** 2 + (n_b - 1) * sd_b ** 2) / (n_a + n_b - 2)
    if pooled <= 0:
        return None
    return (mean_a - mean_b) / math.sqrt(pooled) * (1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0))


def welch_from_stats(mean_a, sd_a, n_a: int, mean_b, sd_b, n_b: int, *, alpha: float = ALPHA) -> Welch:
    """Welch's t-test from means, sample sds and counts (scipy ttest_ind_from_stats, equal_var=False)."""
    n_a, n_b = int(n_a or 0), int(n_b or 0)
    mean_a = finite(mean_a) if n_a else None
    mean_b = finite(mean_b) if n_b else None
    sd_a, sd_b = finite(sd_a), finite(sd_b)
    diff = mean_a - mean_b if mean_a is not None and mean_b is not None else None
    diff_pct = diff / abs(mean_b) * 100.0 if diff is not None and mean_b else None
    g = hedges_g(mean_a, sd_a, n_a, mean_b, sd_b, n_b) if diff is not None else None

    def untested(note: str) -> Welch:
        return Welch(n_a, n_b, mean_a, mean_b, diff, diff_pct, None, None, None, g, None, None, False, note)

    if n_a < 2 or n_b < 2 or sd_a is None or sd_b is None:
        return untested(f"need >= 2 values per side (got {n_a} and {n_b}); no test possible")
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    if va + vb == 0:
        return untested("both samples are constant; no variance to test against")
    from scipy.special import stdtr

    se = math.sqrt(va + vb)
    t = diff / se
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    p = float(min(1.0, 2.0 * stdtr(df, -abs(t))))
    half = t_quantile(df, 0.975) * se
    return Welch(n_a, n_b, mean_a, mean_b, diff, diff_pct, t, df, p, g, diff - half, diff + half,
                 p < alpha, None)


def log_welch_from_stats(log_mean_a, log_sd_a, n_a: int, log_mean_b, log_sd_b, n_b: int, *,
                         alpha: float = ALPHA) -> Welch:
    """Welch's t-test of the logs of two positive samples, back-transformed (``scale`` "log").

    mean_a / mean_b are geometric means, diff their difference, diff_pct and the CI
    the change of a against b in percent ((ratio - 1) x 100); t, df, p and Hedges' g
    are those of the logs. Same p as scipy's ttest_ind on np.log of the values.
    """
    w = welch_from_stats(log_mean_a, log_sd_a, n_a, log_mean_b, log_sd_b, n_b, alpha=alpha)

    def geo(value):
        return math.exp(value) if value is not None else None

    def pct(value):
        return (math.exp(value) - 1.0) * 100.0 if value is not None else None

    mean_a, mean_b = geo(w.mean_a), geo(w.mean_b)
    diff = mean_a - mean_b if mean_a is not None and mean_b is not None else None
    return replace(w, mean_a=mean_a, mean_b=mean_b, diff=diff, diff_pct=pct(w.diff),
                   ci95_low=pct(w.ci95_low), ci95_high=pct(w.ci95_high), scale="log")


def log_welch_summaries(a: DistributionSummary, b: DistributionSummary, *, alpha: float = ALPHA) -> Welch:
    """log_welch_from_stats of two DistributionSummary (their geometric means and log sds)."""
    return log_welch_from_stats(a.log_mean, a.log_sd, a.n if a.geo_mean else 0,
                                b.log_mean, b.log_sd, b.n if b.geo_mean else 0, alpha=alpha)


def welch(a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA) -> Welch:
    """Welch's t-test of two small samples (run means, quality scores)."""
    a_vals = [v for v in (finite(x) for x in a) if v is not None]
    b_vals = [v for v in (finite(x) for x in b) if v is not None]

    def stats(values):
        if not values:
            return None, None, 0
        sd = float(np.std(values, ddof=1)) if len(values) >= 2 else None
        return float(np.mean(values)), sd, len(values)

    (ma, sa, na), (mb, sb, nb) = stats(a_vals), stats(b_vals)
    return welch_from_stats(ma, sa, na, mb, sb, nb, alpha=alpha)


@dataclass(frozen=True)
class Verdict:
    """What a baseline -> candidate change means: significant, and a regression or an improvement."""

    significant: bool
    regression: bool
    improvement: bool


def regression_verdict(comparison: Welch, *, higher_is_better: bool, threshold_pct: float,
                       alpha: float = ALPHA) -> Verdict:
    """The regression rule, on a Welch comparison of candidate (a) against baseline (b).

    A regression is significant (p < alpha) AND worse than ``threshold_pct`` in
    the metric's bad direction; an improvement mirrors it. The threshold keeps
    real but irrelevant drifts (2% measured very precisely) from paging anyone.
    """
    significant = comparison.p_value is not None and comparison.p_value < alpha
    if comparison.diff_pct is None:
        return Verdict(significant, False, False)
    better_pct = comparison.diff_pct if higher_is_better else -comparison.diff_pct
    return Verdict(significant, significant and better_pct < -threshold_pct,
                   significant and better_pct > threshold_pct)


# --------------------------------------------------------------------------- ANOVA


@dataclass(frozen=True)
class Cell:
    """Observations sharing one combination of factor levels: count, mean, sum of squared deviations."""

    levels: tuple
    n: int
    mean: float
    ss: float


@dataclass(frozen=True)
class AnovaTerm:
    term: str
    factors: tuple[str, ...]
    df: float
    sum_sq: float
    mean_sq: float
    f_value: float
    p_value: float
    significant: bool
    partial_eta_sq: float

    @property
    def order(self) -> int:
        return len(self.factors)


@dataclass(frozen=True)
class Anova:
    """Type II factorial ANOVA of one metric (as oracles.effects.anova); ``note`` says what was not tested."""

    metric: str
    n_obs: int
    factors: tuple[str, ...]
    dropped: tuple[str, ...]
    order: int
    terms: tuple[AnovaTerm, ...]
    df_resid: float | None
    ss_resid: float | None
    r_squared: float | None
    alpha: float
    note: str | None = None

    @property
    def tested(self) -> bool:
        return bool(self.terms)

    def term(self, *factors: str) -> AnovaTerm | None:
        wanted = frozenset(factors)
        return next((t for t in self.terms if frozenset(t.factors) == wanted), None)

    @property
    def main_effects(self) -> tuple[AnovaTerm, ...]:
        return tuple(t for t in self.terms if t.order == 1)

    @property
    def interactions(self) -> tuple[AnovaTerm, ...]:
        return tuple(t for t in self.terms if t.order > 1)


def merge_cells(cells: Sequence[Cell]) -> Cell:
    """Pool cells into one (for level means and marginal tables)."""
    n = sum(c.n for c in cells)
    mean = sum(c.n * c.mean for c in cells) / n
    ss = sum(c.ss + c.n * (c.mean - mean) ** 2 for c in cells)
    return Cell((), n, mean, ss)


def _design(cells: Sequence[Cell], levels: Sequence[Sequence], terms: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Treatment-coded design at the cell level: intercept, then each term's dummy products."""
    dummies = []
    for f, values in enumerate(levels):
        index = {v: i for i, v in enumerate(values)}
        column = np.zeros((len(cells), max(len(values) - 1, 0)))
        for row, cell in enumerate(cells):
            i = index[cell.levels[f]]
            if i > 0:
                column[row, i - 1] = 1.0
        dummies.append(column)
    blocks = [np.ones((len(cells), 1))]
    for term in terms:
        block = np.ones((len(cells), 1))
        for f in term:
            block = np.einsum("ri,rj->rij", block, dummies[f]).reshape(len(cells), -1)
        blocks.append(block)
    return np.hstack(blocks)


def _rss(x: np.ndarray, means: np.ndarray, weights: np.ndarray, ss_within: float) -> float:
    root = np.sqrt(weights)
    coef, *_ = np.linalg.lstsq(x * root[:, None], means * root, rcond=None)
    fitted = x @ coef
    return float(ss_within + np.sum(weights * (means - fitted) ** 2))


def anova_cells(cells: Sequence[Cell], factors: Sequence[str], metric: str, *, max_order: int = 3,
                alpha: float = ALPHA) -> Anova:
    """Type II ANOVA of observations summarised by cells (one per combination of levels).

    Same model as oracles.effects.anova (C(factor) main effects and interactions up
    to ``max_order``, lowered until the design has full rank and residual df > 0;
    single-level factors dropped): the model's residual sum of squares is the
    within-cell sum of squares plus the weighted misfit of the cell means, and
    each term's SS is RSS(terms not containing it) - RSS(same + the term).
    """
    cells = [c for c in cells if c.n > 0]
    n_obs = sum(c.n for c in cells)

    def empty(note: str, kept=(), dropped=()) -> Anova:
        return Anova(metric, n_obs, tuple(kept), tuple(dropped), 0, (), None, None, None, alpha, note)

    levels_all = [sorted({c.levels[i] for c in cells}) for i in range(len(factors))]
    keep = [i for i, values in enumerate(levels_all) if len(values) >= 2]
    dropped = [factors[i] for i in range(len(factors)) if i not in keep]
    if not keep:
        return empty("no parameter has two or more levels outside the baseline; no test possible",
                     dropped=dropped)
    kept_names = [factors[i] for i in keep]
    if n_obs < 3:
        return empty(f"only {n_obs} observations; no test possible", kept_names, dropped)
    grand = merge_cells(cells)
    if grand.ss <= 0:
        return empty(f"{metric} has zero variance; no test possible", kept_names, dropped)
    # re-key the cells on the kept factors (pooling cells that only differed in a dropped one)
    grouped: dict[tuple, list[Cell]] = {}
    for c in cells:
        grouped.setdefault(tuple(c.levels[i] for i in keep), []).append(c)
    cells = [Cell(key, m.n, m.mean, m.ss) for key, group in sorted(grouped.items())
             for m in [merge_cells(group)]]
    levels = [levels_all[i] for i in keep]
    means = np.array([c.mean for c in cells])
    weights = np.array([float(c.n) for c in cells])
    ss_within = float(sum(c.ss for c in cells))
    k = len(keep)
    notes: list[str] = []
    order = min(max_order, k)
    while order >= 1:
        terms = [combo for r in range(1, order + 1) for combo in itertools.combinations(range(k), r)]
        x = _design(cells, levels, terms)
        rank = int(np.linalg.matrix_rank(x))
        if rank == x.shape[1] and n_obs - rank > 0:
            break
        notes.append(f"order {order} not estimable: " + (
            "residual df would be <= 0" if n_obs - rank <= 0
            else "design is incomplete or confounded (rank-deficient)"))
        order -= 1
    else:
        return empty("; ".join(notes) + "; no test possible", kept_names, dropped)
    rss_full = _rss(x, means, weights, ss_within)
    df_resid = float(n_obs - x.shape[1])
    if rss_full <= 1e-12 * grand.ss:
        notes.append("residual variance is zero (model fits exactly); F undefined, no test possible")
        return Anova(metric, n_obs, tuple(kept_names), tuple(dropped), order, (), df_resid, rss_full,
                     1.0, alpha, "; ".join(notes))
    from scipy.special import fdtrc

    mse = rss_full / df_resid
    out: list[AnovaTerm] = []
    for term in terms:
        others = [t for t in terms if not set(term) < set(t) and t != term]
        reduced = _rss(_design(cells, levels, others), means, weights, ss_within)
        with_term = _rss(_design(cells, levels, others + [term]), means, weights, ss_within)
        term_df = float(np.prod([len(levels[f]) - 1 for f in term]))
        sum_sq = max(reduced - with_term, 0.0)
        f_value = (sum_sq / term_df) / mse
        p_value = float(fdtrc(term_df, df_resid, f_value))
        names = tuple(kept_names[f] for f in term)
        out.append(AnovaTerm(":".join(names), names, term_df, sum_sq, sum_sq / term_df, f_value,
                             p_value, p_value < alpha, sum_sq / (sum_sq + rss_full)))
    if order < min(max_order, k):
        notes.append(f"fell back to interactions up to order {order}")
    if dropped:
        notes.append("single-level or missing parameters dropped: " + ", ".join(dropped))
    return Anova(metric, n_obs, tuple(kept_names), tuple(dropped), order, tuple(out), df_resid, rss_full,
                 1.0 - rss_full / grand.ss, alpha, "; ".join(notes) or None)


def level_table(cells: Sequence[Cell], factor_index: int) -> list[tuple[Any, Cell]]:
    """(level, pooled cell) per level of one factor, levels sorted."""
    grouped: dict[Any, list[Cell]] = {}
    for c in cells:
        grouped.setdefault(c.levels[factor_index], []).append(c)
    return [(level, merge_cells(group)) for level, group in sorted(grouped.items())]


def cell_summary(cell: Cell) -> DistributionSummary:
    """Geometric mean and interval of the log observations pooled in a cell (log run means)."""
    sd = math.sqrt(cell.ss / (cell.n - 1)) if cell.n >= 2 else None
    return log_summary(cell.n, cell.mean, sd)


def population(values: Mapping[str, float | None]):
    from tr111.stats.summary import population_summary

    return population_summary(values)
