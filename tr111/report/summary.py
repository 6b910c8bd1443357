"""One typed summary of a sweep, built once from the report context; every output reads it.

The report's regression section, summary.json, the Prefect artifacts,
``tr111 compare`` and ``tr111 export`` all print from these objects (through
tr111.report.formatting), so a number cannot differ between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from tr111.report.metrics import BY_KEY, STAGES, Measure
from tr111.report.recommend import Tier
from tr111.stats.summary import DistributionSummary

if TYPE_CHECKING:
    from tr111.report.context import ReportContext

DIST_FIELDS = ("n", "mean", "geo_mean", "stddev", "cv_pct", "ci95_low", "ci95_high", "p50", "p95")


def _dist(d: DistributionSummary) -> dict:
    return {k: getattr(d, k) for k in DIST_FIELDS}


@dataclass(frozen=True)
class MetricChange:
    """One config, one measure: the candidate's run means against the baseline's (log-scale Welch).

    ``baseline_mean``/``candidate_mean`` are geometric means of the run means and
    ``change_pct`` their ratio minus one, in percent.
    """

    config_id: str
    metric: str  # a tr111.report.metrics.Metric key: "decode" or "ttft"
    stage: str
    baseline_mean: float | None
    candidate_mean: float | None
    change: float | None
    change_pct: float | None
    p_value: float | None
    t: float | None
    df: float | None
    hedges_g: float | None
    significant: bool
    regression: bool
    improvement: bool
    n_baseline: int
    n_candidate: int
    note: str | None = None

    @property
    def measure(self) -> Measure:
        return BY_KEY[f"{self.metric}_{self.stage}"]

    @classmethod
    def from_change(cls, config_id: str, measure: Measure, change: dict) -> "MetricChange":
        """From the dict history._change returns (the regression rule's verdict)."""
        names = [f.name for f in fields(cls) if f.name not in ("config_id", "metric", "stage")]
        return cls(config_id=config_id, metric=measure.metric.key, stage=measure.stage,
                   **{n: change.get(n) for n in names})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("config_id", "metric", "stage")}


@dataclass(frozen=True)
class ConfigChange:
    """One config present in both sweeps: the change of every checked measure, and the verdict."""

    config_id: str
    changes: tuple[MetricChange, ...]

    @property
    def regression(self) -> bool:
        return any(c.regression for c in self.changes)

    @property
    def improvement(self) -> bool:
        return any(c.improvement for c in self.changes)

    def change(self, key: str) -> MetricChange | None:
        """The change of one measure (metrics.Measure.key, e.g. "ttft_analysis")."""
        return next((c for c in self.changes if c.measure.key == key), None)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"config_id": self.config_id, "regression": self.regression,
                               "improvement": self.improvement}
        for c in self.changes:
            out.setdefault(c.measure.metric.json_name, {})[c.stage] = c.to_dict()
        return out


@dataclass(frozen=True)
class SweepComparison:
    """A candidate sweep against a baseline sweep; ``baseline`` None: nothing to compare with."""

    baseline: str | None
    candidate: str
    threshold_pct: float
    alpha: float
    rows: tuple[ConfigChange, ...] = ()
    only_baseline: tuple[str, ...] = ()
    only_candidate: tuple[str, ...] = ()
    baseline_started_at: Any = None

    @property
    def previous(self) -> str | None:
        """The report's name for the baseline: the previous sweep of the same matrix."""
        return self.baseline

    @property
    def previous_started_at(self) -> Any:
        return self.baseline_started_at

    @property
    def flagged(self) -> list[str]:
        return [r.config_id for r in self.rows if r.regression]

    @property
    def improved(self) -> list[str]:
        return [r.config_id for r in self.rows if r.improvement]

    def to_dict(self) -> dict:
        """The comparison as ``tr111 compare --json`` prints it (and summary.json holds it)."""
        return {"baseline": self.baseline, "candidate": self.candidate, "threshold_pct": self.threshold_pct,
                "alpha": self.alpha, "flagged": self.flagged, "improved": self.improved,
                "only_baseline": list(self.only_baseline), "only_candidate": list(self.only_candidate),
                "rows": [r.to_dict() for r in self.rows]}


@dataclass(frozen=True)
class StageAggregate:
    """One config at one stage: rates, warm and cold TTFT, and warm TTFT's parts (arithmetic
    means over warm calls: load + prefill + overhead = the mean warm TTFT)."""

    stage: str
    calls: int
    warm_calls: int
    cold_calls: int
    truncated: int
    prompt_tokens: float | None
    decode_tps: DistributionSummary
    prefill_tps: DistributionSummary
    warm_ttft_ms: DistributionSummary
    cold_ttft_ms: DistributionSummary
    load_ms: float | None
    prefill_ms: float | None
    overhead_ms: float | None

    def to_dict(self) -> dict:
        return {f.name: (_dist(v) if isinstance(v, DistributionSummary) else v)
                for f in fields(self) for v in [getattr(self, f.name)] if f.name != "stage"}


@dataclass(frozen=True)
class ConfigAggregate:
    """A config: its per-stage aggregates, and TR111's pooled figures kept for comparison
    (``study_*``: every call of both stages, cold included; bimodal by construction)."""

    config_id: str
    is_baseline: bool
    calls: int
    runs: int
    truncated: int
    stages: tuple[StageAggregate, ...]
    study_throughput_tps: DistributionSummary
    study_ttft_ms: DistributionSummary
    total_tokens: int | None
    quality_overall: float | None

    def stage(self, name: str) -> StageAggregate | None:
        return next((s for s in self.stages if s.stage == name), None)

    def to_dict(self) -> dict:
        return {"config_id": self.config_id, "is_baseline": self.is_baseline, "calls": self.calls,
                "runs": self.runs, "truncated": self.truncated,
                "stages": {s.stage: s.to_dict() for s in self.stages},
                "study_throughput_tps": _dist(self.study_throughput_tps),
                "study_ttft_ms": _dist(self.study_ttft_ms),
                "total_tokens": self.total_tokens, "quality_overall": self.quality_overall}


@dataclass(frozen=True)
class ConfigQuality:
    """A config's mean automated quality score, and how it stands against the baseline's."""

    config_id: str
    n: int
    overall: float | None
    ci95_low: float | None
    ci95_high: float | None
    diff: float | None  # overall minus the baseline's; None for the baseline or without one
    p_value: float | None  # Welch against the baseline
    below: bool  # clearly below the baseline (sections.QUALITY_MARGIN)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SweepSummary:
    """The gist of a sweep: what summary.json, the artifacts and the exports publish."""

    sweep_id: str
    model: str | None
    status: str | None
    aggregate: tuple[ConfigAggregate, ...]
    regressions: SweepComparison
    quality: tuple[ConfigQuality, ...]
    recommendations: tuple[Tier, ...]
    plots: dict = field(default_factory=dict)

    @property
    def quality_below_baseline(self) -> list[str]:
        return [q.config_id for q in self.quality if q.below]

    def with_plots(self, plots: dict) -> "SweepSummary":
        return replace(self, plots=dict(plots))

    def to_dict(self) -> dict:
        return {
            "sweep_id": self.sweep_id, "model": self.model, "status": self.status,
            "aggregate": [a.to_dict() for a in self.aggregate],
            "regressions": {"previous": self.regressions.previous, **self.regressions.to_dict()},
            "quality": [q.to_dict() for q in self.quality],
            "quality_below_baseline": self.quality_below_baseline,
            "recommendations": [{"tier": t.name, "key": t.key, "config_id": t.config_id, "value": t.value,
                                 "unit": t.unit, "rationale": t.rationale, "tied": list(t.tied),
                                 "caveat": t.caveat} for t in self.recommendations],
            "plots": self.plots,
        }

    def to_json(self) -> str:
        """summary.json's text."""
        return json.dumps(self.to_dict(), indent=1, default=str)


def build_summary(ctx: "ReportContext") -> SweepSummary:
    """The summary of a built report context (no query of its own: the numbers are the report's)."""
    quality = []
    for q in ctx.quality["rows"]:
        low, high = q.get("ci") or (None, None)
        test = q.get("test")
        quality.append(ConfigQuality(config_id=q["config_id"], n=q["n"], overall=q["overall"], ci95_low=low,
                                     ci95_high=high, diff=q.get("diff"),
                                     p_value=test.p_value if test is not None else None, below=q["below"]))
    overall = {q.config_id: q.overall for q in quality}

    def stage(name: str, st: dict) -> StageAggregate:
        return StageAggregate(stage=name, calls=st["calls"], warm_calls=st["warm_calls"],
                              cold_calls=st["cold_calls"], truncated=st["truncated"],
                              prompt_tokens=st["prompt_tokens"], decode_tps=st["decode"],
                              prefill_tps=st["prefill"], warm_ttft_ms=st["ttft"], cold_ttft_ms=st["ttft_cold"],
                              load_ms=st["load_ms"], prefill_ms=st["prefill_ms"], overhead_ms=st["overhead_ms"])

    aggregate = tuple(
        ConfigAggregate(config_id=e["config_id"], is_baseline=e["is_baseline"], calls=e["calls"], runs=e["runs"],
                        truncated=e["truncated"], stages=tuple(stage(s, e["stages"][s]) for s in STAGES),
                        study_throughput_tps=e["study_tps"], study_ttft_ms=e["study_ttft"],
                        total_tokens=e["total_tokens"], quality_overall=overall.get(e["config_id"]))
        for e in ctx.entries)
    return SweepSummary(sweep_id=ctx.sweep["sweep_id"], model=ctx.sweep.get("model"),
                        status=ctx.sweep.get("status"), aggregate=aggregate, regressions=ctx.regressions,
                        quality=tuple(quality), recommendations=tuple(ctx.recommendations),
                        plots=dict(ctx.plots))
