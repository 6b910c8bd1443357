"""Descriptive statistics with confidence intervals for benchmark metrics.

Pure functions over plain values: no I/O, no DataFrames. Every summary carries
``n`` and a 95% CI so a report never shows a mean without saying how sure it is.

The interval of a positive quantity (a time, a rate) is a t interval on the log
scale, back-transformed (``log_t_ci``): the CI of the geometric mean. Latencies
are right-skewed and their effects multiplicative; on the log scale the t
interval fits them, and back-transformed it can never go below zero (a plain t
interval of a bimodal TTFT did: [-7,860, 13,069] ms). It needs only n, the
mean and the sd of the logs, so DuckDB can aggregate it over any number of rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
MIN_N_CI = 2  # fewer observations give no interval: the report prints "n too small"


def clean_values(values: Iterable[Any]) -> list[float]:
    """Finite floats only: None, NaN, inf and non-numbers are measurement gaps, not data."""
    kept: list[float] = []
    for value in values:
        if value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            kept.append(number)
    return kept


def cv_pct(mean: float | None, stddev: float | None) -> float | None:
    """Coefficient of variation in percent; None when undefined (no stddev or mean 0)."""
    if mean is None or stddev is None or mean == 0:
        return None
    return abs(stddev / mean) * 100.0


def t_quantile(df: float, q: float) -> float:
    """Student-t quantile via scipy.special (what scipy.stats.t.ppf calls, without its ~70 MB import)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


def t_ci(mean: float | None, stddev: float | None, n: int,
         confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """Student-t interval of a mean from (mean, sample sd, n): the one CI formula of the product.

    (None, None) when n < 2; with zero spread it collapses to the mean instead of NaN.
    """
    if mean is None or stddev is None or n < MIN_N_CI:
        return None, None
    sem = stddev / math.sqrt(n)
    if sem == 0:
        return mean, mean
    half = t_quantile(n - 1, (1.0 + confidence) / 2.0) * sem
    return mean - half, mean + half


def log_t_ci(log_mean: float | None, log_sd: float | None, n: int,
             confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """The interval of a positive quantity: t_ci of the logs, back-transformed (module doc).

    It is the CI of the geometric mean exp(log_mean); always > 0, wider above than below.
    """
    low, high = t_ci(log_mean, log_sd, n, confidence)
    if low is None or high is None:
        return None, None
    return math.exp(low), math.exp(high)


def bounded_t_ci(mean: float | None, stddev: float | None, n: int, lower: float = 0.0, upper: float = 1.0,
                 confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """t_ci of a mean that cannot leave [lower, upper] (quality scores), cut to that range.

    A score is bounded, not multiplicative, so no log scale: the mean is known to lie
    in the range, and intersecting an interval with it keeps the coverage.
    """
    low, high = t_ci(mean, stddev, n, confidence)
    if low is None or high is None:
        return None, None
    return max(low, lower), min(high, upper)


@dataclass(frozen=True)
class DistributionSummary:
    """Mean, spread and CI of one metric over a set of observations.

    ``stddev`` is the sample standard deviation (ddof=1); it, the CV and the CI
    are None when n < 2 because one observation says nothing about spread.
    ``geo_mean`` and ``log_sd`` exist when every value is > 0; the CI is then
    log_t_ci (the geometric mean's), else None: no interval below zero is printed.
    """

    n: int
    mean: float | None
    stddev: float | None
    cv_pct: float | None
    ci95_low: float | None
    ci95_high: float | None
    median: float | None
    p50: float | None
    p95: float | None
    min: float | None
    max: float | None
    geo_mean: float | None = None
    log_sd: float | None = None

    @classmethod
    def from_values(cls, values: Iterable[float | None]) -> "DistributionSummary":
        """Summarise ``values``, ignoring None/NaN; n=0 gives all-None fields."""
        kept = clean_values(values)
        return cls(**_summary_fields(kept))

    @property
    def log_mean(self) -> float | None:
        """Mean of the logs (None without a geometric mean): what log-scale tests compare."""
        return math.log(self.geo_mean) if self.geo_mean else None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON / DataFrame rows)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _summary_fields(kept: Sequence[float]) -> dict[str, Any]:
    n = len(kept)
    if n == 0:
        return dict(n=0, mean=None, stddev=None, cv_pct=None, ci95_low=None, ci95_high=None,
                    median=None, p50=None, p95=None, min=None, max=None, geo_mean=None, log_sd=None)
    array = np.asarray(kept, dtype=float)
    mean = float(array.mean())
    stddev = float(array.std(ddof=1)) if n >= 2 else None
    geo = log_sd = None
    if array.min() > 0:
        logs = np.log(array)
        geo = float(math.exp(logs.mean()))
        log_sd = float(logs.std(ddof=1)) if n >= 2 else None
    low, high = log_t_ci(math.log(geo) if geo else None, log_sd, n)
    median = float(np.median(array))
    return dict(
        n=n,
        mean=mean,
        stddev=stddev,
        cv_pct=cv_pct(mean, stddev),
        ci95_low=low,
        ci95_high=high,
        median=median,
        p50=median,
        # linear interpolation (numpy default), the same rule pandas uses
        p95=float(np.percentile(array, 95)),
        min=float(array.min()),
        max=float(array.max()),
        geo_mean=geo,
        log_sd=log_sd,
    )


@dataclass(frozen=True)
class PopulationSummary(DistributionSummary):
    """Spread of per-config means across configs (the report's §5.1/§5.2).

    ``range`` is max - min; ``min_config``/``max_config`` name the extremes.
    """

    range: float | None = None
    min_config: str | None = None
    max_config: str | None = None


def population_summary(config_means: Mapping[str, float | None]) -> PopulationSummary:
    """Mean/median/stddev/range/CV of config means; configs with a missing mean are skipped."""
    kept = {cid: float(v) for cid, v in config_means.items() if clean_values([v])}
    base = _summary_fields(list(kept.values()))
    if not kept:
        return PopulationSummary(**base)
    min_config = min(kept, key=lambda cid: (kept[cid], cid))
    max_config = max(kept, key=lambda cid: (kept[cid], cid))
    return PopulationSummary(
        **base,
        range=base["max"] - base["min"],
        min_config=min_config,
        max_config=max_config,
    )


@dataclass(frozen=True)
class RankedEntry:
    """One line of a ranking table: position, config and the ranked value."""

    rank: int
    config_id: str
    value: float
    summary: DistributionSummary


def rank_configs(
    summaries: Mapping[str, DistributionSummary],
    *,
    attr: str = "mean",
    descending: bool = True,
    top: int | None = 5,
) -> list[RankedEntry]:
    """Rank configs by a summary attribute (mean tps descending, TTFT or CV ascending).

    Configs whose attribute is None are left out; ties break on config_id so the
    ranking is stable across runs.
    """
    rows = [(cid, getattr(s, attr), s) for cid, s in summaries.items() if getattr(s, attr) is not None]
    rows.sort(key=lambda row: ((-row[1] if descending else row[1]), row[0]))
    if top is not None:
        rows = rows[:top]
    return [RankedEntry(rank=i + 1, config_id=cid, value=float(v), summary=s)
            for i, (cid, v, s) in enumerate(rows)]


@dataclass(frozen=True)
class Comparison:
    """Welch comparison of sample ``a`` against reference sample ``b``.

    Signs follow "a minus b": ``diff`` = mean_a - mean_b, ``diff_pct`` is relative
    to mean_b, ``t`` and ``hedges_g`` are positive when a is larger, and the CI is
    for mean_a - mean_b with Welch–Satterthwaite df. With ``scale`` "log" the test
    ran on logs: the means are geometric, ``diff_pct`` is (ratio - 1) x 100 and the
    CI is that percentage's (tr111.stats.inference.log_welch_from_stats).
    """

    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    diff: float | None
    diff_pct: float | None
    t: float | None
    df: float | None
    p_value: float | None
    hedges_g: float | None
    ci95_low: float | None
    ci95_high: float | None
    significant: bool
    note: str | None = None
    scale: str = "linear"
