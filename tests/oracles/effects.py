"""Test oracle (statsmodels, scipy.stats, pandas): sensitivity, factorial ANOVA, Welch tests.

The product computes the same from aggregates in tr111.stats.inference; the
tests check it against this independent, library-backed version.

TR111 claimed "no significant interaction" without running a test; here every
such claim comes from a statsmodels ANOVA row with an F, a p-value and an effect
size. Input is a calls DataFrame with columns ``config_id``, the parameter
columns (``num_gpu``, ``num_ctx``, ``temperature``; NaN for the baseline's
defaults), ``run_number``, the metric, and optionally ``is_cold``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import patsy
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.anova import anova_lm

from tr111.stats.summary import Comparison, clean_values  # noqa: F401 (Comparison re-exported)

PARAMS = ("num_gpu", "num_ctx", "temperature")
ALPHA = 0.05
ANOVA_TYPE = 2  # typ II: exact for balanced designs, no contrast coding needed


def observations(
    df: pd.DataFrame,
    metric: str,
    params: Sequence[str] = PARAMS,
    *,
    unit: str = "run",
    exclude_cold: bool = False,
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """Rows usable for effect estimates: baseline excluded, metric present.

    The baseline is any row with a missing parameter value (Ollama defaults are
    not a level of the factor). ``unit="run"`` averages calls within a run
    (config_id, run_number) because runs, not calls, are the independent
    replicates; ``unit="call"`` keeps every call. ``extra`` columns (e.g. a
    block factor) are kept, and with unit="run" become part of the grouping.
    """
    params = [p for p in params if p in df.columns]
    needed = [metric, *params, *extra]
    if metric not in df.columns or any(c not in df.columns for c in extra):
        return pd.DataFrame(columns=needed)
    frame = df
    if exclude_cold and "is_cold" in frame.columns:
        frame = frame[~frame["is_cold"].fillna(False).astype(bool)]
    frame = frame.dropna(subset=[*params, *extra])
    frame = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
    if unit == "run" and {"config_id", "run_number"} <= set(frame.columns):
        keys = ["config_id", "run_number", *params, *extra]
        frame = frame.groupby(keys, as_index=False, sort=True)[metric].mean()
    elif unit not in ("run", "call"):
        raise ValueError(f"unit must be 'run' or 'call', not {unit!r}")
    ids = [c for c in ("config_id", "run_number") if c in frame.columns and c not in needed]
    return frame[[*ids, *dict.fromkeys(needed)]].reset_index(drop=True)


# --------------------------------------------------------------------------- sensitivity


@dataclass(frozen=True)
class LevelStat:
    level: float
    mean: float
    n: int  # observations (runs or calls) at this level
    n_configs: int


@dataclass(frozen=True)
class ParamSensitivity:
    """How much one parameter moves a metric: per-level means and the max-min delta.

    ``delta_pct`` is (max - min level mean) / |min level mean| * 100, i.e. how much
    the best level differs from the worst relative to the lower one. ``p_value``
    is the parameter's main-effect p from an AnovaResult when one is supplied.
    """

    param: str
    metric: str
    levels: tuple[LevelStat, ...]
    delta_abs: float | None
    delta_pct: float | None
    best_level: float | None  # level with the highest mean (caller decides if higher is better)
    worst_level: float | None
    p_value: float | None = None
    significant: bool | None = None


def sensitivity(
    df: pd.DataFrame,
    metric: str,
    params: Sequence[str] = PARAMS,
    *,
    unit: str = "run",
    exclude_cold: bool = False,
    anova_result: "AnovaResult | None" = None,
) -> list[ParamSensitivity]:
    """Per-parameter level means and deltas over non-baseline rows (report §6.1-6.3)."""
    obs = observations(df, metric, params, unit=unit, exclude_cold=exclude_cold)
    result: list[ParamSensitivity] = []
    for param in params:
        if param not in obs.columns:
            continue
        levels: list[LevelStat] = []
        for level, group in obs.groupby(param, sort=True):
            n_configs = group["config_id"].nunique() if "config_id" in group.columns else 0
            levels.append(LevelStat(float(level), float(group[metric].astype(float).mean()),
                                    len(group), int(n_configs)))
        delta_abs = delta_pct = best = worst = None
        if levels:
            high = max(levels, key=lambda s: s.mean)
            low = min(levels, key=lambda s: s.mean)
            delta_abs = high.mean - low.mean
            delta_pct = delta_abs / abs(low.mean) * 100.0 if low.mean != 0 else None
            best, worst = high.level, low.level
        p_value = significant = None
        if anova_result is not None:
            row = anova_result.row(param)
            if row is not None:
                p_value, significant = row.p_value, row.significant
        result.append(ParamSensitivity(param, metric, tuple(levels), delta_abs, delta_pct,
                                       best, worst, p_value, significant))
    return result


# --------------------------------------------------------------------------- ANOVA


@dataclass(frozen=True)
class AnovaRow:
    """One ANOVA term. ``partial_eta_sq`` = SS_term / (SS_term + SS_residual)."""

    term: str  # "num_gpu", "num_gpu:num_ctx", ...
    df: float
    sum_sq: float
    mean_sq: float
    f_value: float
    p_value: float
    significant: bool
    partial_eta_sq: float
    order: int  # 1 = main effect, 2 = two-way interaction, ...

    @property
    def F(self) -> float:  # noqa: N802 - the conventional name
        return self.f_value

    @property
    def is_interaction(self) -> bool:
        return self.order > 1


@dataclass(frozen=True)
class AnovaResult:
    """Factorial ANOVA of one metric; ``note`` says why no (or a reduced) test was run."""

    metric: str
    anova_type: str  # "II"
    unit: str
    n_obs: int
    params: tuple[str, ...]  # factors in the model
    dropped_params: tuple[str, ...]  # factors with a single level
    order: int  # highest interaction order fitted (0 when no model)
    formula: str | None
    rows: tuple[AnovaRow, ...]
    df_resid: float | None
    ss_resid: float | None
    r_squared: float | None
    alpha: float
    note: str | None = None

    @property
    def tested(self) -> bool:
        return bool(self.rows)

    def row(self, term: str) -> AnovaRow | None:
        """Row by term; factor order in ``term`` does not matter ("b:a" == "a:b")."""
        wanted = frozenset(term.split(":"))
        return next((r for r in self.rows if frozenset(r.term.split(":")) == wanted), None)

    @property
    def main_effects(self) -> tuple[AnovaRow, ...]:
        return tuple(r for r in self.rows if r.order == 1)

    @property
    def interactions(self) -> tuple[AnovaRow, ...]:
        return tuple(r for r in self.rows if r.order > 1)

    @property
    def significant_terms(self) -> tuple[str, ...]:
        return tuple(r.term for r in self.rows if r.significant)


def _terms(factor_names: Sequence[str], order: int) -> list[tuple[str, ...]]:
    return [combo for k in range(1, order + 1) for combo in itertools.combinations(factor_names, k)]


def anova(
    df: pd.DataFrame,
    metric: str,
    params: Sequence[str] = PARAMS,
    max_order: int = 3,
    *,
    unit: str = "run",
    exclude_cold: bool = False,
    block: str | None = None,
    alpha: float = ALPHA,
) -> AnovaResult:
    """Type II ANOVA of ``metric`` on C(param) factors with interactions up to ``max_order``.

    Why these choices: typ II tests each term after all terms that do not contain
    it; in a balanced full factorial it equals typ I/III and needs no sum-to-zero
    contrasts. Factors with one level are dropped. The highest order is lowered
    until the design matrix has full rank and residual df > 0 (an incomplete
    design cannot estimate its highest interaction). ``block`` adds a main-effect
    nuisance factor (e.g. "stage" with unit="call"). Degenerate input returns a
    result with ``note`` and no rows instead of raising.
    """
    extra = (block,) if block else ()
    obs = observations(df, metric, params, unit=unit, exclude_cold=exclude_cold, extra=extra)
    present = [p for p in params if p in obs.columns]
    missing = [p for p in params if p not in obs.columns]

    def empty(note: str, *, factors=(), dropped=(), order=0, formula=None) -> AnovaResult:
        return AnovaResult(metric, "II", unit, len(obs), tuple(factors), tuple(dropped), order, formula,
                           (), None, None, None, alpha, note)

    if metric not in df.columns:
        return empty(f"no column {metric!r}; no test possible")
    factors = [p for p in present if obs[p].nunique() >= 2]
    dropped = [p for p in present if p not in factors] + missing
    if not factors:
        return empty("no parameter has two or more levels outside the baseline; no test possible",
                     dropped=dropped)
    y = obs[metric].astype(float).to_numpy()
    if len(y) < 3:
        return empty(f"only {len(y)} observations; no test possible", factors=factors, dropped=dropped)
    if np.ptp(y) == 0:
        return empty(f"{metric} has zero variance (all values {y[0]:g}); no test possible",
                     factors=factors, dropped=dropped)

    data = pd.DataFrame({"y": y})
    aliases = {f"f{i}": name for i, name in enumerate(factors)}
    for alias, name in aliases.items():
        data[alias] = obs[name].to_numpy()
    block_terms: list[str] = []
    if block and obs[block].nunique() >= 2:
        data["blk"] = obs[block].astype(str).to_numpy()
        block_terms = ["C(blk)"]

    notes: list[str] = []
    order = min(max_order, len(factors))
    formula = None
    while order >= 1:
        terms = [":".join(f"C({a})" for a in combo) for combo in _terms(list(aliases), order)]
        candidate = "y ~ " + " + ".join(terms + block_terms)
        design = patsy.dmatrix(candidate.split("~", 1)[1], data, return_type="dataframe")
        rank = np.linalg.matrix_rank(design.to_numpy())
        if rank == design.shape[1] and len(data) - rank > 0:
            formula = candidate
            break
        reason = ("residual df would be <= 0" if len(data) - rank <= 0
                  else "design is incomplete or confounded (rank-deficient)")
        notes.append(f"order {order} not estimable: {reason}")
        order -= 1
    if formula is None:
        return empty("; ".join(notes) + "; no test possible", factors=factors, dropped=dropped)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smf.ols(formula, data=data).fit()
        table = anova_lm(model, typ=ANOVA_TYPE)
    ss_resid = float(table.loc["Residual", "sum_sq"])
    df_resid = float(table.loc["Residual", "df"])
    readable = formula
    for alias, name in sorted(aliases.items(), key=lambda kv: -len(kv[0])):
        readable = readable.replace(f"C({alias})", f"C({name})")
    readable = readable.replace("y ~", f"{metric} ~", 1).replace("C(blk)", f"C({block})")
    if ss_resid <= 1e-12 * float(np.sum((y - y.mean()) ** 2)):
        notes.append("residual variance is zero (model fits exactly); F undefined, no test possible")
        return AnovaResult(metric, "II", unit, len(data), tuple(factors), tuple(dropped), order, readable,
                           (), df_resid, ss_resid, float(model.rsquared), alpha, "; ".join(notes))

    rows: list[AnovaRow] = []
    for term, values in table.iterrows():
        if term == "Residual":
            continue
        parts = [p[2:-1] for p in str(term).split(":")]  # "C(f0)" -> "f0"
        names = [block if p == "blk" else aliases[p] for p in parts]
        sum_sq, term_df = float(values["sum_sq"]), float(values["df"])
        f_value, p_value = float(values["F"]), float(values["PR(>F)"])
        rows.append(AnovaRow(
            term=":".join(names), df=term_df, sum_sq=sum_sq, mean_sq=sum_sq / term_df,
            f_value=f_value, p_value=p_value, significant=bool(p_value < alpha),
            partial_eta_sq=sum_sq / (sum_sq + ss_resid), order=len(names),
        ))
    if order < min(max_order, len(factors)):
        notes.append(f"fell back to interactions up to order {order}")
    if dropped:
        notes.append("single-level or missing parameters dropped: " + ", ".join(dropped))
    return AnovaResult(metric, "II", unit, len(data), tuple(factors), tuple(dropped), order, readable,
                       tuple(rows), df_resid, ss_resid, float(model.rsquared), alpha,
                       "; ".join(notes) or None)


def cell_means(df: pd.DataFrame, metric: str, row_param: str, col_param: str, *,
               unit: str = "run", exclude_cold: bool = False) -> pd.DataFrame:
    """Mean metric per (row level, col level): the table behind an interaction plot."""
    obs = observations(df, metric, (row_param, col_param), unit=unit, exclude_cold=exclude_cold)
    if obs.empty or row_param not in obs.columns or col_param not in obs.columns:
        return pd.DataFrame()
    return obs.pivot_table(index=row_param, columns=col_param, values=metric, aggfunc="mean")


# --------------------------------------------------------------------------- two-sample


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Bias-corrected standardized mean difference (a - b) / pooled sd; None if undefined."""
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return None
    pooled_var = ((n_a - 1) * np.var(a, ddof=1) + (n_b - 1) * np.var(b, ddof=1)) / (n_a + n_b - 2)
    if pooled_var <= 0:
        return None
    correction = 1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0)
    return float((np.mean(a) - np.mean(b)) / math.sqrt(pooled_var) * correction)


def welch_compare(a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA) -> Comparison:
    """Welch's t-test (scipy ttest_ind, equal_var=False) plus effect size and CI.

    Degenerate input (n < 2 on a side, or both sides constant) gives
    p_value None and a note rather than scipy's inf/NaN.
    """
    a_vals, b_vals = clean_values(a), clean_values(b)
    n_a, n_b = len(a_vals), len(b_vals)
    mean_a = float(np.mean(a_vals)) if n_a else None
    mean_b = float(np.mean(b_vals)) if n_b else None
    diff = mean_a - mean_b if mean_a is not None and mean_b is not None else None
    diff_pct = diff / abs(mean_b) * 100.0 if diff is not None and mean_b else None

    def untested(note: str) -> Comparison:
        return Comparison(n_a, n_b, mean_a, mean_b, diff, diff_pct, None, None, None,
                          hedges_g(a_vals, b_vals), None, None, False, note)

    if n_a < 2 or n_b < 2:
        return untested(f"need >= 2 values per side (got {n_a} and {n_b}); no test possible")
    if np.var(a_vals) == 0 and np.var(b_vals) == 0:
        return untested("both samples are constant; no variance to test against")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.ttest_ind(a_vals, b_vals, equal_var=False)
        ci = result.confidence_interval(confidence_level=0.95)
    p_value = float(result.pvalue)
    return Comparison(
        n_a, n_b, mean_a, mean_b, diff, diff_pct, float(result.statistic), float(result.df), p_value,
        hedges_g(a_vals, b_vals), float(ci.low), float(ci.high), bool(p_value < alpha), None,
    )
