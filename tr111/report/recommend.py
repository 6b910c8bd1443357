"""Recommendation tiers derived from measured summaries, never hard-coded.

TR111 recommended a config by hand; here each tier is a rule over the data
and its rationale is built from the numbers, including whether the winner is
actually distinguishable from the runner-up (Welch from summary statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from tr111.stats.inference import ALPHA, welch_from_stats
from tr111.stats.summary import DistributionSummary


@dataclass(frozen=True)
class ConfigSummary:
    """What the tiers need per config. None parameters mean "server default"."""

    config_id: str
    throughput: DistributionSummary
    warm_ttft: DistributionSummary
    num_gpu: float | None = None
    num_ctx: float | None = None
    temperature: float | None = None
    is_baseline: bool = False


@dataclass(frozen=True)
class Tier:
    """One recommendation: ``key`` is stable for templates, ``name`` is for humans."""

    key: str
    name: str
    config_id: str | None  # None when no config satisfies the rule
    value: float | None
    unit: str
    rationale: str


def _param(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _welch_p(a: DistributionSummary, b: DistributionSummary) -> float | None:
    """Welch p of two summaries (None when untestable), by the product's one Welch."""
    return welch_from_stats(a.mean, a.stddev, a.n, b.mean, b.stddev, b.n).p_value


def _resource_key(summary: Any) -> tuple:
    """Fewer GPU layers first, then smaller context; unknown (server default) sorts last."""
    gpu, ctx = _param(getattr(summary, "num_gpu", None)), _param(getattr(summary, "num_ctx", None))
    return (gpu is None, gpu or 0.0, ctx is None, ctx or 0.0, summary.config_id)


def _ci_text(s: DistributionSummary, fmt: str) -> str:
    if s.ci95_low is None:
        return f"n={s.n}"
    return f"95% CI {s.ci95_low:{fmt}}–{s.ci95_high:{fmt}}, n={s.n}"


def _versus(best: Any, runner: Any, attr: str, unit: str, fmt: str, alpha: float) -> str:
    """Sentence comparing the winner to the runner-up on ``attr`` with a Welch p."""
    if runner is None:
        return "only one config measured"
    a, b = getattr(best, attr), getattr(runner, attr)
    gap = a.mean - b.mean
    pct = gap / abs(b.mean) * 100.0 if b.mean else float("nan")
    p = _welch_p(a, b)
    verdict = ("no test possible" if p is None
               else f"p={p:.3g}, {'significant' if p < alpha else 'not significant — statistically tied'}")
    return f"vs runner-up {runner.config_id}: {gap:+{fmt}} {unit} ({pct:+.1f}%), {verdict}"


def recommendation_tiers(
    summaries: Sequence[Any],
    *,
    tolerance_pct: float = 2.0,
    alpha: float = ALPHA,
) -> list[Tier]:
    """Best throughput, best warm TTFT, most consistent, lowest resource within tolerance.

    ``summaries`` are ConfigSummary or any objects with the same attributes.
    Lowest-resource rule: walk configs by (num_gpu, num_ctx) ascending and take
    the first whose mean throughput is within ``tolerance_pct`` of the best AND
    whose warm TTFT is within ``tolerance_pct`` of the best warm TTFT among those
    throughput-qualified configs, or not significantly worse than it (Welch,
    p >= alpha). Ties break on config_id.
    """
    with_tps = [s for s in summaries if s.throughput.mean is not None]
    with_ttft = [s for s in summaries if s.warm_ttft.mean is not None]
    tiers: list[Tier] = []

    by_tps = sorted(with_tps, key=lambda s: (-s.throughput.mean, s.config_id))
    if by_tps:
        best = by_tps[0]
        runner = by_tps[1] if len(by_tps) > 1 else None
        text = (f"{best.config_id} has the highest mean throughput, {best.throughput.mean:.2f} tok/s "
                f"({_ci_text(best.throughput, '.2f')}); "
                + _versus(best, runner, "throughput", "tok/s", ".2f", alpha))
        tiers.append(Tier("best_throughput", "Best throughput", best.config_id, best.throughput.mean,
                          "tok/s", text))
    else:
        tiers.append(Tier("best_throughput", "Best throughput", None, None, "tok/s", "no throughput data"))

    by_ttft = sorted(with_ttft, key=lambda s: (s.warm_ttft.mean, s.config_id))
    if by_ttft:
        best = by_ttft[0]
        runner = by_ttft[1] if len(by_ttft) > 1 else None
        text = (f"{best.config_id} has the lowest mean warm TTFT, {best.warm_ttft.mean:.1f} ms "
                f"({_ci_text(best.warm_ttft, '.1f')}; cold starts excluded); "
                + _versus(best, runner, "warm_ttft", "ms", ".1f", alpha))
        tiers.append(Tier("best_warm_ttft", "Best warm TTFT", best.config_id, best.warm_ttft.mean,
                          "ms", text))
    else:
        tiers.append(Tier("best_warm_ttft", "Best warm TTFT", None, None, "ms", "no warm TTFT data"))

    with_cv = sorted((s for s in with_tps if s.throughput.cv_pct is not None),
                     key=lambda s: (s.throughput.cv_pct, s.config_id))
    if with_cv:
        best = with_cv[0]
        ttft_cv = best.warm_ttft.cv_pct
        ttft_text = f", warm TTFT CV {ttft_cv:.1f}%" if ttft_cv is not None else ""
        spread = [s.throughput.cv_pct for s in with_cv]
        text = (f"{best.config_id} has the lowest throughput CV, {best.throughput.cv_pct:.2f}% "
                f"(n={best.throughput.n}{ttft_text}); CVs across configs range "
                f"{min(spread):.2f}–{max(spread):.2f}%")
        tiers.append(Tier("most_consistent", "Most consistent", best.config_id, best.throughput.cv_pct,
                          "% CV", text))
    else:
        tiers.append(Tier("most_consistent", "Most consistent", None, None, "% CV",
                          "no config has two or more throughput values"))

    tiers.append(_lowest_resource(with_tps, by_tps, by_ttft, tolerance_pct, alpha))
    return tiers


def _lowest_resource(with_tps: list, by_tps: list, by_ttft: list, tolerance_pct: float,
                     alpha: float) -> Tier:
    key, name = "lowest_resource", f"Lowest resource within {tolerance_pct:g}%"
    if not by_tps:
        return Tier(key, name, None, None, "tok/s", "no throughput data")
    best_tps = by_tps[0]
    floor = best_tps.throughput.mean * (1 - tolerance_pct / 100.0)
    qualified = [s for s in with_tps if s.throughput.mean >= floor]
    # TTFT reference: the best warm TTFT among throughput-qualified configs, so a
    # slow config with a fast TTFT cannot veto every candidate
    qualified_ids = {id(s) for s in qualified}
    best_ttft = next((s for s in by_ttft if id(s) in qualified_ids), None)
    for s in sorted(qualified, key=_resource_key):
        tps_gap = (s.throughput.mean - best_tps.throughput.mean) / abs(best_tps.throughput.mean) * 100.0
        if best_ttft is None or s.warm_ttft.mean is None:
            ttft_text = "warm TTFT not measured, not checked"
        else:
            ceiling = best_ttft.warm_ttft.mean * (1 + tolerance_pct / 100.0)
            ttft_gap = (s.warm_ttft.mean - best_ttft.warm_ttft.mean) / abs(best_ttft.warm_ttft.mean) * 100.0
            if s.warm_ttft.mean <= ceiling:
                ttft_text = (f"warm TTFT {s.warm_ttft.mean:.1f} ms "
                             f"({ttft_gap:+.1f}% vs best, within tolerance)")
            else:
                p = _welch_p(s.warm_ttft, best_ttft.warm_ttft)
                if p is None or p < alpha:
                    continue
                ttft_text = (f"warm TTFT {s.warm_ttft.mean:.1f} ms ({ttft_gap:+.1f}% vs best "
                             f"{best_ttft.config_id}, not significantly worse, p={p:.3g})")
        resources = ", ".join(
            f"{label}={'default' if v is None else f'{v:g}'}"
            for label, v in (("num_gpu", _param(s.num_gpu)), ("num_ctx", _param(s.num_ctx))))
        text = (f"{s.config_id} ({resources}) is the lowest-resource config whose throughput "
                f"{s.throughput.mean:.2f} tok/s is within {tolerance_pct:g}% of the best "
                f"({best_tps.config_id}, {best_tps.throughput.mean:.2f} tok/s; {tps_gap:+.1f}%); {ttft_text}")
        return Tier(key, name, s.config_id, s.throughput.mean, "tok/s", text)
    return Tier(key, name, None, None, "tok/s",
                f"no config is within {tolerance_pct:g}% of the best throughput and warm TTFT")
