"""Recommendation tiers derived from measured summaries, never hard-coded.

TR111 recommended a config by hand; here each tier is a rule over the data,
per stage (tr111.report.metrics), and its rationale is built from the numbers:
whether the winner is distinguishable from the others (log-scale Welch from
summary statistics), which configs are statistically tied with it and how one
was chosen among them (the lowest-resource, then config id), and a loud caveat
for a config whose prompt was truncated (it answered a shorter prompt, so it
must not win on TTFT or anything else by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tr111.report.metrics import CHECKED, STAGES, Measure
from tr111.stats.inference import ALPHA, finite, log_welch_summaries
from tr111.stats.summary import DistributionSummary

CHOICE_RULE = "the lowest-resource of them (fewest GPU layers, then smallest context, then config id)"


@dataclass(frozen=True)
class ConfigSummary:
    """What the tiers need per config, per stage. None parameters mean "server default"."""

    config_id: str
    decode: Mapping[str, DistributionSummary]  # stage -> decode rate (tok/s)
    warm_ttft: Mapping[str, DistributionSummary]  # stage -> warm TTFT (ms)
    truncated: Mapping[str, int] = field(default_factory=dict)  # stage -> calls with a truncated prompt
    num_gpu: float | None = None
    num_ctx: float | None = None
    temperature: float | None = None
    is_baseline: bool = False

    def value(self, measure: Measure) -> DistributionSummary | None:
        return (self.decode if measure.metric.key == "decode" else self.warm_ttft).get(measure.stage)

    @property
    def was_truncated(self) -> bool:
        return any(self.truncated.values())


@dataclass(frozen=True)
class Tier:
    """One recommendation: ``key`` is stable for templates, ``name`` is for humans.

    ``tied``: the other configs of the chosen one's tie group (the best and those not
    distinguishable from it, log Welch p >= alpha); ``caveat``: a warning the report
    prints loudly before the tier.
    """

    key: str
    name: str
    config_id: str | None  # None when no config satisfies the rule
    value: float | None
    unit: str
    rationale: str
    tied: tuple[str, ...] = ()
    caveat: str | None = None


def _welch_p(a: DistributionSummary, b: DistributionSummary) -> float | None:
    """Welch p of the logs of two summaries (None when untestable), by the product's one Welch."""
    return log_welch_summaries(a, b).p_value


def _resource_key(summary: Any) -> tuple:
    """Fewer GPU layers first, then smaller context; unknown (server default) sorts last."""
    gpu, ctx = finite(getattr(summary, "num_gpu", None)), finite(getattr(summary, "num_ctx", None))
    return (gpu is None, gpu or 0.0, ctx is None, ctx or 0.0, summary.config_id)


def _ci_text(s: DistributionSummary, fmt: str) -> str:
    if s.ci95_low is None:
        return f"n={s.n}, n too small for an interval" if s.n < 2 else f"n={s.n}"
    return f"95% CI {s.ci95_low:{fmt}}–{s.ci95_high:{fmt}}, n={s.n}"


def _verdict(p: float | None, alpha: float) -> str:
    if p is None:
        return "no test possible"
    return f"p={p:.3g}, {'significant' if p < alpha else 'not significant — statistically tied'}"


def _eligible(summaries: Sequence[ConfigSummary]) -> tuple[list, str | None, list]:
    """(configs a tier may pick, the caveat if it must pick a truncated one, the truncated set aside)."""
    clean = [s for s in summaries if not s.was_truncated]
    apart = [s for s in summaries if s.was_truncated]
    if clean or not apart:
        return clean, None, apart
    return list(summaries), ("⚠ every measured config had truncated prompts: this pick answered a shorter "
                             "prompt than the data summary; do not use it without a larger num_ctx"), []


def _set_aside(apart: list) -> str:
    if not apart:
        return ""
    return ("; not considered: " + ", ".join(f"{s.config_id} (⚠ truncated prompt, "
                                             f"{', '.join(k for k, v in s.truncated.items() if v)})"
                                             for s in apart))


def _best_tier(summaries: Sequence[ConfigSummary], measure: Measure, alpha: float) -> Tier:
    """Best geometric mean of one measure; ties (p >= alpha against the best) resolved by CHOICE_RULE."""
    verb = "Highest" if measure.higher_is_better else "Lowest"
    key, name = f"best_{measure.key}", f"{verb} {measure.name}"
    eligible, caveat, apart = _eligible(summaries)
    measured = [s for s in eligible if (v := s.value(measure)) is not None and v.geo_mean is not None]
    if not measured:
        return Tier(key, name, None, None, measure.unit, f"no {measure.name} data")
    sign = -1.0 if measure.higher_is_better else 1.0
    ranked = sorted(measured, key=lambda s: (sign * s.value(measure).geo_mean, s.config_id))
    best = ranked[0]
    fmt = ".2f" if measure.unit == "tok/s" else ".1f"
    b = best.value(measure)
    pvals = {s.config_id: _welch_p(s.value(measure), b) for s in ranked[1:]}
    tied = [s for s in ranked[1:] if pvals[s.config_id] is not None and pvals[s.config_id] >= alpha]
    chosen = min([best, *tied], key=_resource_key)
    text = (f"{best.config_id} has the {verb.lower()} geometric-mean {measure.name}, "
            f"{b.geo_mean:{fmt}} {measure.unit} ({_ci_text(b, fmt)})")
    if tied:
        text += ("; statistically tied with it (log-scale Welch, p ≥ " f"{alpha:g}): "
                 + ", ".join(f"{s.config_id} ({s.value(measure).geo_mean:{fmt}} {measure.unit}, "
                             f"p={pvals[s.config_id]:.3g})" for s in tied)
                 + f"; chose {chosen.config_id}, {CHOICE_RULE}")
    elif len(ranked) > 1:
        runner = ranked[1]
        gap = (b.geo_mean / runner.value(measure).geo_mean - 1.0) * 100.0
        text += (f"; vs runner-up {runner.config_id}: {gap:+.1f}% (log-scale Welch), "
                 + _verdict(pvals[runner.config_id], alpha))
    else:
        text += "; only one config measured"
    group = tuple(s.config_id for s in [best, *tied] if s is not chosen)
    return Tier(key, name, chosen.config_id, chosen.value(measure).geo_mean, measure.unit,
                text + _set_aside(apart), group, caveat)


def _worst_cv(s: ConfigSummary) -> float | None:
    cvs = [d.cv_pct for d in s.decode.values() if d is not None and d.cv_pct is not None]
    return max(cvs) if cvs else None


def _most_consistent(summaries: Sequence[ConfigSummary]) -> Tier:
    key, name = "most_consistent", "Most consistent"
    eligible, caveat, apart = _eligible(summaries)
    with_cv = sorted((s for s in eligible if _worst_cv(s) is not None), key=lambda s: (_worst_cv(s), s.config_id))
    if not with_cv:
        return Tier(key, name, None, None, "% CV", "no config has two or more decode-rate values in a stage")
    best = with_cv[0]
    spread = [_worst_cv(s) for s in with_cv]
    per_stage = ", ".join(f"{stage} {d.cv_pct:.2f}%" for stage, d in best.decode.items() if d.cv_pct is not None)
    text = (f"{best.config_id} has the lowest decode-rate CV in its worse stage, {_worst_cv(best):.2f}% "
            f"({per_stage}); across configs the worse-stage CV ranges {min(spread):.2f}–{max(spread):.2f}%")
    return Tier(key, name, best.config_id, _worst_cv(best), "% CV", text + _set_aside(apart), caveat=caveat)


def recommendation_tiers(summaries: Sequence[ConfigSummary], *, tolerance_pct: float = 2.0,
                         alpha: float = ALPHA) -> list[Tier]:
    """Best decode rate and lowest warm TTFT per stage, most consistent, lowest resource within tolerance.

    Lowest-resource rule: walk configs by (num_gpu, num_ctx) ascending and take the
    first whose decode rate is within ``tolerance_pct`` of the best in every stage
    AND whose warm TTFT in every stage is within ``tolerance_pct`` of the best
    among those decode-qualified configs, or not significantly worse than it
    (log-scale Welch, p >= alpha). Truncated configs take part only when every
    config was truncated, and then with a caveat.
    """
    tiers = [_best_tier(summaries, m, alpha) for m in CHECKED]
    tiers.append(_most_consistent(summaries))
    tiers.append(_lowest_resource(summaries, tolerance_pct, alpha))
    return tiers


def _lowest_resource(summaries: Sequence[ConfigSummary], tolerance_pct: float, alpha: float) -> Tier:
    key, name = "lowest_resource", f"Lowest resource within {tolerance_pct:g}%"
    eligible, caveat, apart = _eligible(summaries)

    def geo(s, kind, stage):
        d = getattr(s, kind).get(stage)
        return d.geo_mean if d is not None else None

    stages = [st for st in STAGES if any(geo(s, "decode", st) is not None for s in eligible)]
    if not stages:
        return Tier(key, name, None, None, "tok/s", "no decode-rate data")
    best = {st: max(geo(s, "decode", st) for s in eligible if geo(s, "decode", st) is not None) for st in stages}
    qualified = [s for s in eligible if all(geo(s, "decode", st) is not None
                                            and geo(s, "decode", st) >= best[st] * (1 - tolerance_pct / 100.0)
                                            for st in stages)]
    ttft_best = {}
    for st in STAGES:
        with_ttft = [s for s in qualified if geo(s, "warm_ttft", st) is not None]
        if with_ttft:
            ttft_best[st] = min(with_ttft, key=lambda s: (geo(s, "warm_ttft", st), s.config_id))
    for s in sorted(qualified, key=_resource_key):
        notes = []
        for st, ref in ttft_best.items():
            mine, theirs = s.warm_ttft.get(st), ref.warm_ttft[st]
            if mine is None or mine.geo_mean is None:
                notes.append(f"warm TTFT ({st}) not measured")
                continue
            gap = (mine.geo_mean / theirs.geo_mean - 1.0) * 100.0
            if gap > tolerance_pct:
                p = _welch_p(mine, theirs)
                if p is None or p < alpha:
                    break
                notes.append(f"warm TTFT ({st}) {mine.geo_mean:.1f} ms, {gap:+.1f}% vs {ref.config_id}, "
                             f"not significantly worse (p={p:.3g})")
            else:
                notes.append(f"warm TTFT ({st}) {mine.geo_mean:.1f} ms ({gap:+.1f}%, within tolerance)")
        else:
            resources = ", ".join(f"{label}={'default' if v is None else f'{v:g}'}"
                                  for label, v in (("num_gpu", finite(s.num_gpu)), ("num_ctx", finite(s.num_ctx))))
            rates = ", ".join(f"{st} {geo(s, 'decode', st):.2f} tok/s "
                              f"({(geo(s, 'decode', st) / best[st] - 1) * 100:+.1f}%)" for st in stages)
            text = (f"{s.config_id} ({resources}) is the lowest-resource config whose decode rate is within "
                    f"{tolerance_pct:g}% of the best in every stage ({rates}); " + "; ".join(notes))
            return Tier(key, name, s.config_id, geo(s, "decode", stages[-1]), "tok/s", text + _set_aside(apart),
                        caveat=caveat)
    return Tier(key, name, None, None, "tok/s",
                f"no config is within {tolerance_pct:g}% of the best decode rate and warm TTFT in every stage")


def by_config(tiers: Sequence[Tier]) -> list[dict]:
    """Tiers grouped by the config they pick, in tier order: a config best on several rules is
    named once, with every rule it won (item 8 of issue 10); unpicked tiers come last, alone."""
    groups: dict[Any, dict] = {}
    for i, t in enumerate(tiers):
        slot = t.config_id if t.config_id is not None else f"_none{i}"
        groups.setdefault(slot, {"config_id": t.config_id, "tiers": []})["tiers"].append(t)
    return sorted(groups.values(), key=lambda g: g["config_id"] is None)
