"""Build the report's context from the warehouse: every number comes from recorded rows.

Aggregation happens in DuckDB (tr111.report.queries), per config and stage
(tr111.report.metrics); the statistics on top (CIs, Welch, ANOVA) work on those
aggregates (tr111.stats). Nothing here imports Prefect, pandas, statsmodels or
matplotlib.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb

from tr111.report.fleet import host_effects
from tr111.report import analysis, history, queries, scoring, sections
from tr111.report.formatting import code, text
from tr111.report.conditions import Conditions, conditions as measurement_conditions
from tr111.report.metrics import CHECKED, MEASURES, STAGE_PROMPTS, STAGES
from tr111.report.recommend import by_config
from tr111.report.summary import SweepComparison, SweepSummary, build_summary
from tr111.warehouse.reader import sweep_row

LIST_LIMIT = 200  # rows of run / failure tables listed in full; beyond, failures only


@dataclass
class ReportContext:
    sweep: dict
    matrix: dict
    environment: dict
    configs: list[dict]
    entries: list[dict]
    rankings: list
    standing: dict
    population: dict
    effects: dict
    chimera: dict
    quality: dict
    gpu: list[dict] | None
    recommendations: list
    regressions: SweepComparison
    trend: dict
    runs: list[dict]
    failed_calls: list[dict]
    problems: list[dict]
    counts: dict
    findings: dict
    limitations: list[str]
    threshold_pct: float
    warehouse_path: str | None = None
    plots: dict = field(default_factory=dict)
    summary: SweepSummary | None = None  # built once by build_context; what every output publishes
    conditions: Conditions | None = None  # host noise, run order, options the server ignored
    fleet: list = field(default_factory=list)  # per config, stage and host over the sweep's fleet
    fleet_effects: list = field(default_factory=list)  # host x config ANOVA (replicate fleets)

    @property
    def aggregate(self) -> list[dict]:
        return self.entries

    def as_dict(self) -> dict:
        """What the templates see: the fields, and the stage and measure registry."""
        from tr111.report.formatting import TRUNCATED

        out = dict(self.__dict__)
        out.update(aggregate=self.entries, stages=STAGES, stage_prompts=STAGE_PROMPTS, measures=MEASURES,
                   checked=CHECKED, truncated_mark=TRUNCATED, tier_groups=by_config(self.recommendations),
                   truncated_at={st: [e["config_id"] for e in self.entries if e["stages"][st]["truncated"]]
                                 for st in STAGES})
        return out


def environment(sweep: dict, configs: list[dict]) -> dict:
    """Host, software and model as detected at run time (sweeps.environment_json, /api/show, /api/ps)."""
    try:
        env = json.loads(sweep.get("environment_json") or "{}") or {}
    except ValueError:
        env = {}
    show = env.get("show") or next((c["show"] for c in configs if c.get("show")), None) or {}
    ps = next((c["ps"] for c in configs if c.get("ps")), None) or {}
    details = dict(show.get("details") or ps.get("details") or {})
    info = show.get("model_info") or {}
    arch = info.get("general.architecture")
    return {
        "host": env.get("host") or sweep.get("host"), "os": env.get("os"), "python": env.get("python"),
        "cpu": env.get("cpu"), "cpu_count": env.get("cpu_count"), "memory_gib": env.get("memory_gib"),
        "cpu_pinning": env.get("cpu_pinning"),
        "gpus": env.get("gpus") or [], "engine": sweep.get("engine") or "ollama",
        "server_version": sweep.get("server_version"), "engine_model_file": sweep.get("engine_model_file"),
        "tr111_version": sweep.get("tr111_version"), "model": sweep.get("model"),
        "digest": ps.get("digest"), "family": details.get("family"), "format": details.get("format"),
        "parameter_size": details.get("parameter_size"),
        "quantization": details.get("quantization_level"),
        "parameter_count": info.get("general.parameter_count"),
        "trained_context": info.get(f"{arch}.context_length") if arch else None,
        "size_vram": ps.get("size_vram"),
    }


def build_context(con: duckdb.DuckDBPyConnection, sweep_id: str, *, threshold_pct: float | None = None,
                  extra_scores: list[dict] | None = None, score_missing: bool = True) -> ReportContext:
    """Everything the templates print. ``extra_scores``: quality scores not (yet) stored.

    With ``score_missing`` the report calls that have no stored quality score are
    scored here (in memory) so a read-only warehouse still gets a quality section.
    """
    if threshold_pct is None:
        from tr111.settings import Settings

        threshold_pct = Settings.build().regression_threshold_pct
    sweep = sweep_row(con, sweep_id)
    matrix = json.loads(sweep.get("matrix_json") or "{}")
    params = list((matrix.get("grid") or {}).keys())
    for column in ("num_gpu", "num_ctx", "temperature"):
        if column not in params:
            params.append(column)
    configs = queries.configs(con, sweep_id, params)
    calls = queries.call_stats(con, sweep_id)
    runs = queries.run_stats(con, sweep_id)
    items = sections.entries(configs, calls, queries.stage_stats(con, sweep_id), runs)
    measured_under = measurement_conditions(con, sweep, configs, analysis.swept_factors(matrix, configs))

    extra = list(extra_scores or [])
    if score_missing:
        extra += list(scoring.score_pending(con, sweep_id))
    table = scoring.register_scores(con, sweep_id, extra)
    quality = sections.quality(items, queries.quality_stats(con, sweep_id, table))
    quality["unstored"] = len(extra)

    run_list, counts = queries.runs(con, sweep_id, LIST_LIMIT)
    counts["configs"] = len(configs)
    counts["configs_measured"] = sum(1 for e in items if e["calls"])
    counts["calls_stat"] = sum(e["calls"] for e in items)
    counts["cold_calls"] = sum(e["cold_calls"] for e in items)
    counts["total_tokens"] = sum(e["total_tokens"] or 0 for e in items)
    counts["truncated_configs"] = [e["config_id"] for e in items if e["truncated"]]
    counts["ttft_clocks"] = queries.ttft_clocks(con, sweep_id)

    ctx = ReportContext(
        sweep=sweep, matrix=matrix, environment=environment(sweep, configs), configs=configs,
        fleet=queries.fleet_table(con, sweep), fleet_effects=host_effects(con, sweep),
        entries=items, rankings=sections.rankings(items), standing=sections.standing(items),
        population=sections.populations(items),
        effects=analysis.parameter_effects(configs, runs, matrix, items,
                                           ignored=measured_under.ignored_names),
        chimera=sections.chimera(items), quality=quality,
        gpu=sections.gpu_rows(queries.gpu_stats(con, sweep_id), items),
        recommendations=sections.recommendations(items),
        regressions=history.regression_section(con, sweep, threshold_pct),
        trend=history.trend_section(con, sweep),
        runs=run_list, failed_calls=queries.failed_calls(con, sweep_id, LIST_LIMIT),
        problems=queries.problems(con, sweep_id, LIST_LIMIT), counts=counts, findings={},
        limitations=[], threshold_pct=threshold_pct, conditions=measured_under,
        warehouse_path=queries.scalar(con, "SELECT file FROM pragma_database_list "
                                           "WHERE name = current_database()"))
    ctx.findings = findings(ctx)
    ctx.limitations = limitations(ctx)
    ctx.summary = build_summary(ctx)
    return ctx


def findings(ctx: ReportContext) -> dict[str, Any]:
    """The executive summary's key findings, as values (the template words them)."""
    pop = ctx.population
    baseline = next((e for e in ctx.entries if e["is_baseline"]), None)
    measured = [e for e in ctx.entries if e["calls"]]
    significant = {key: [t for t in a["main"] + a["interactions"] if t["significant"]]
                   for key, a in ctx.effects.get("anova", {}).items()}
    per_stage = {}
    for stage in STAGES:
        st = [e["stages"][stage] for e in ctx.entries]
        cold = [s["ttft_cold"].geo_mean for s in st if s["ttft_cold"].geo_mean is not None]
        warm = [s["ttft"].geo_mean for s in st if s["ttft"].geo_mean is not None]
        per_stage[stage] = {
            "cold_mean": _mean(cold), "warm_mean": _mean(warm),
            "decode_cv": _range([s["decode"].cv_pct for s in st if s["decode"].cv_pct is not None]),
            "warm_cv": _range([s["ttft"].cv_pct for s in st if s["ttft"].cv_pct is not None]),
            "overhead": _range([s["overhead_ms"] for s in st if s["overhead_ms"] is not None]),
        }
    spreads = {m.key: sections.spread_pct(pop[m.key].min, pop[m.key].max) for m in MEASURES}
    spreads["study_tps"] = sections.spread_pct(pop["study_tps"].min, pop["study_tps"].max)
    spreads["study_ttft"] = sections.spread_pct(pop["study_ttft"].min, pop["study_ttft"].max)
    others = {m.key: _mean([sections.value(e, m).geo_mean for e in sections.comparable(ctx.entries, m)[0]
                            if not e["is_baseline"]]) for m in MEASURES}
    return {
        "others": others, "prompt_tokens": {st: _range([e["stages"][st]["prompt_tokens"] for e in measured
                                                        if e["stages"][st]["prompt_tokens"] is not None])
                                            for st in STAGES},
        "spread_pct": spreads, "winners": by_config([t for t in ctx.recommendations if t.key.startswith("best_")]),
        "baseline": baseline, "measured": len(measured),
        "baseline_rank": {m.key: (ctx.standing[m.key].get(baseline["config_id"]), len(ctx.standing[m.key]))
                          for m in CHECKED} if baseline else {},
        "stages": per_stage, "significant": significant,
        "truncated": [e for e in ctx.entries if e["truncated"]],
        "tokens_range": _range([e["total_tokens"] for e in measured if e["total_tokens"] is not None]),
    }


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _range(values: list) -> tuple | None:
    return (min(values), max(values)) if values else None


def limitations(ctx: ReportContext) -> list[str]:
    """Limits of this data set, stated from the data (the template adds fixed method limits)."""
    out = []
    run_counts = [e["runs"] for e in ctx.entries if e["runs"]]
    if run_counts:
        low, high = min(run_counts), max(run_counts)
        per = f"{low}" if low == high else f"{low}–{high}"
        out.append(f"{per} successful run(s) per config: run-level tests (Welch, ANOVA) have few "
                   "degrees of freedom, and a real difference smaller than the run-to-run noise "
                   "will read as \"not significant\".")
    host = ctx.environment.get("host")
    out.append(f"One host ({text(host or 'unknown')}), one server ({ctx.environment['engine']} "
               f"{text(ctx.environment.get('server_version') or '')}".rstrip() + "), one model "
               f"({code(ctx.sweep.get('model'))}): results do not transfer to other hardware or models "
               "without a new sweep.")
    if ctx.counts.get("cold_calls"):
        out.append(f"{ctx.counts['cold_calls']} cold call(s) paid a model load; they are excluded "
                   "from warm TTFT and shown separately, so warm TTFT describes a loaded model only.")
    out.append("TTFT depends on the prompt: the analysis and the report call are reported apart, and "
               "within a stage the prompts of different configs differ by their run-unique nonce and, for "
               "the report call, by the analysis each model wrote; prefill rate (tok/s) is the "
               "prompt-independent comparison.")
    if ctx.counts.get("calls_error") or ctx.counts["runs"] - ctx.counts["runs_ok"]:
        out.append(f"{ctx.counts.get('calls_error', 0)} failed call attempt(s) and "
                   f"{ctx.counts['runs'] - ctx.counts['runs_ok']} failed run(s) are excluded from the "
                   "statistics (listed in the runs and faults section).")
    if ctx.counts.get("truncated"):
        out.append(f"{ctx.counts['truncated']} call(s) had their prompt truncated by the server's "
                   "context window (" + ", ".join(ctx.counts["truncated_configs"]) + "): those configs "
                   "answered a shorter prompt than the others, so their TTFT is not ranked, tested or "
                   "recommended; compare their prefill rate instead.")
    cond = ctx.conditions
    if cond is not None and cond.noise.affected:
        out.append(f"{cond.noise.contended_calls} call(s) in {len(cond.noise.runs)} run(s) were timed while "
                   "other processes used the CPUs (section 2.5): their figures include that contention.")
    if cond is not None and not cond.noise.visible:
        out.append("The server's host is remote: its load during the calls is unknown.")
    for ignored in (cond.ignored if cond is not None else ()):
        out.append(f"`{ignored.option}` was swept but the server did not apply it ({ignored.meaning} "
                   f"{ignored.observed} at every level): it is not analysed as a parameter.")
    for key, result in ctx.effects.get("anova", {}).items():
        if result.get("note"):
            out.append(f"ANOVA of {result['metric'].name}: {result['note']}.")
    if ctx.gpu is None:
        out.append("No GPU telemetry was recorded: memory, utilisation, power and energy are not reported.")
    if not ctx.regressions.previous:
        out.append("No earlier completed sweep of the same matrix and model: no regression check.")
    return out
