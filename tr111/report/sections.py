"""Section contents computed from per-config, per-stage aggregates: tables, rankings, comparisons.

Central values are geometric means (the log scale every interval and test uses);
TR111's pooled figures are kept beside them as ``study_*`` for comparison.
"""

from __future__ import annotations

from typing import Any

from tr111.report.metrics import CHECKED, DECODE, MEASURES, STAGES, Measure
from tr111.stats.inference import ALPHA, log_welch_from_stats, population, welch_from_stats
from tr111.stats.summary import DistributionSummary, bounded_t_ci, rank_configs

QUALITY_MARGIN = 0.10  # overall score points below the baseline that count as "clearly below"
EMPTY = DistributionSummary.from_values([])
EMPTY_STAGE = {"calls": 0, "warm_calls": 0, "cold_calls": 0, "truncated": 0, "truncation_reason": None,
               "prompt_tokens": None, "eval_tokens": None, "load_ms": None, "prefill_ms": None,
               "overhead_ms": None, "cold_load_ms": None, "decode": EMPTY, "prefill": EMPTY, "ttft": EMPTY,
               "ttft_cold": EMPTY}


def entries(configs: list[dict], calls: dict[str, dict], stages: dict[str, dict],
            runs: dict[str, dict]) -> list[dict]:
    """One entry per config in matrix order: its parameters, per-stage statistics and TR111's figures."""
    out = []
    for c in configs:
        stats = calls.get(c["config_id"], {})
        per_stage = stages.get(c["config_id"], {})
        out.append({
            "config_id": c["config_id"], "is_baseline": bool(c["is_baseline"]), "levels": c["levels"],
            "options_json": c.get("options_json"), "context_length": c.get("context_length"),
            "size_vram": c.get("size_vram"),
            "calls": stats.get("calls", 0), "runs": stats.get("runs", 0),
            "total_tokens": stats.get("total_tokens"), "cold_calls": stats.get("cold_calls", 0),
            "truncated": stats.get("truncated", 0),
            "study_tps": stats.get("study_tps", EMPTY), "study_ttft": stats.get("study_ttft", EMPTY),
            "stages": {s: dict(EMPTY_STAGE, **per_stage.get(s, {})) for s in STAGES},
            "run": runs.get(c["config_id"], {}),
        })
    return out


def value(entry: dict, measure: Measure) -> DistributionSummary:
    """The call-level summary of one measure of a config."""
    return entry["stages"][measure.stage][measure.metric.key]


def comparable(items: list[dict], measure: Measure) -> tuple[list[dict], list[dict]]:
    """(configs whose measure can be compared, those set aside): a TTFT whose prompt was
    truncated answered a shorter prompt, so it is not compared (its prefill rate is)."""
    measured = [e for e in items if value(e, measure).geo_mean is not None]
    if not measure.metric.same_prompt:
        return measured, []
    keep = [e for e in measured if not e["stages"][measure.stage]["truncated"]]
    return keep, [e for e in measured if e["stages"][measure.stage]["truncated"]]


def _order(entries: list[dict], measure: Measure) -> list[dict]:
    sign = -1.0 if measure.higher_is_better else 1.0
    return sorted(entries, key=lambda e: (sign * value(e, measure).geo_mean, e["config_id"]))


def rankings(items: list[dict], top: int = 5) -> list[dict]:
    """Per measure: the top configs by geometric mean; truncated TTFTs listed apart, unranked."""
    out = []
    for m in MEASURES:
        keep, apart = comparable(items, m)
        ranked = rank_configs({e["config_id"]: value(e, m) for e in keep}, attr="geo_mean",
                              descending=m.higher_is_better, top=top)
        by = {e["config_id"]: e for e in keep}
        out.append({"measure": m, "excluded": apart,
                    "rows": [{"rank": r.rank, "config_id": r.config_id, "value": r.value, "summary": r.summary,
                              "entry": by[r.config_id]} for r in ranked]})
    worst = {e["config_id"]: max(cvs) for e in items
             if (cvs := [e["stages"][s]["decode"].cv_pct for s in STAGES
                         if e["stages"][s]["decode"].cv_pct is not None])}
    order = sorted(worst, key=lambda cid: (worst[cid], cid))[:top]
    by_id = {e["config_id"]: e for e in items}
    out.append({"measure": None, "excluded": [],
                "rows": [{"rank": i + 1, "config_id": cid, "value": worst[cid], "summary": None,
                          "entry": by_id[cid]} for i, cid in enumerate(order)]})
    return out


def standing(items: list[dict]) -> dict[str, dict[str, int]]:
    """Per measure: rank of every comparable config on its geometric mean (1 = best)."""
    return {m.key: {e["config_id"]: i + 1 for i, e in enumerate(_order(comparable(items, m)[0], m))}
            for m in MEASURES}


def populations(items: list[dict]) -> dict[str, Any]:
    """Spread of the per-config geometric means across configs, per measure; and of TR111's figures."""
    out = {m.key: population({e["config_id"]: value(e, m).geo_mean for e in comparable(items, m)[0]})
           for m in MEASURES}
    for key in ("study_tps", "study_ttft"):
        out[key] = population({e["config_id"]: e[key].mean for e in items})
    return out


def spread_pct(low: float | None, high: float | None) -> float | None:
    """(max - min) / min x 100: how far the worst config mean is from the best."""
    if low is None or high is None or low == 0:
        return None
    return (high - low) / abs(low) * 100.0


def run_test(a: dict, b: dict, measure: Measure):
    """Log-scale Welch of config a's run means against config b's on one measure."""
    x, y = a["run"].get(measure.key) or {}, b["run"].get(measure.key) or {}
    return log_welch_from_stats(x.get("mean"), x.get("sd"), x.get("n") or 0, y.get("mean"), y.get("sd"),
                                y.get("n") or 0, alpha=ALPHA)


def chimera(items: list[dict]) -> dict[str, Any]:
    """Baseline vs the best non-baseline config of each checked measure (log Welch on run means).

    A config that is best on several measures is compared once, with every measure it won;
    configs with truncated calls do not compete.
    """
    baseline = next((e for e in items if e["is_baseline"]), None)
    others = [e for e in items if not e["is_baseline"]]
    out: dict[str, Any] = {"baseline": baseline, "comparisons": []}
    if baseline is None or not others:
        return out
    picks: dict[str, dict] = {}
    clean = [e for e in others if not e["truncated"]]  # as the recommendations: never a truncated config
    for m in CHECKED:
        keep = _order(comparable(clean, m)[0], m)
        if keep:
            picks.setdefault(keep[0]["config_id"], {"best": keep[0], "by": []})["by"].append(m)
    for pick in picks.values():
        pick["tests"] = [{"measure": m, "test": run_test(pick["best"], baseline, m)} for m in MEASURES]
        out["comparisons"].append(pick)
    return out


def quality(items: list[dict], qstats: dict[str, dict]) -> dict[str, Any]:
    """Mean scores per config and the configs clearly below the baseline (by QUALITY_MARGIN)."""
    rows = []
    baseline = next((e for e in items if e["is_baseline"]), None)
    base = qstats.get(baseline["config_id"]) if baseline else None
    for e in items:
        q = qstats.get(e["config_id"])
        if not q:
            continue
        row = dict(q)
        row["ci"] = population_ci(q)
        row["below"] = False
        row["test"] = None
        if base and not e["is_baseline"]:
            row["diff"] = q["overall"] - base["overall"]
            row["test"] = welch_from_stats(q["overall"], q["overall_sd"], q["n"], base["overall"],
                                           base["overall_sd"], base["n"])
            row["below"] = row["diff"] < -QUALITY_MARGIN
        rows.append(row)
    return {"rows": rows, "baseline": base, "margin": QUALITY_MARGIN,
            "below": [r["config_id"] for r in rows if r["below"]], "scored": sum(r["n"] for r in rows)}


def population_ci(q: dict) -> tuple[float | None, float | None]:
    """A quality score's interval: bounded to the score's range [0, 1] (summary.bounded_t_ci)."""
    return bounded_t_ci(q["overall"], q["overall_sd"], q["n"])


def recommendations(items: list[dict]) -> list:
    from tr111.report.recommend import ConfigSummary, recommendation_tiers

    summaries = []
    for e in items:
        if not any(e["stages"][s]["calls"] for s in STAGES):
            continue
        levels = e["levels"]
        summaries.append(ConfigSummary(
            config_id=e["config_id"], decode={s: e["stages"][s][DECODE.key] for s in STAGES},
            warm_ttft={s: e["stages"][s]["ttft"] for s in STAGES},
            truncated={s: e["stages"][s]["truncated"] for s in STAGES},
            num_gpu=levels.get("num_gpu"), num_ctx=levels.get("num_ctx"),
            temperature=levels.get("temperature"), is_baseline=e["is_baseline"]))
    return recommendation_tiers(summaries)


def gpu_rows(gpu: list[dict] | None, items: list[dict]) -> list[dict] | None:
    if gpu is None:
        return None
    by = {g["config_id"]: g for g in gpu}
    return [by.get(e["config_id"], {"config_id": e["config_id"], "calls": 0}) for e in items]
