"""Section contents computed from per-config aggregates: tables, rankings, comparisons, findings."""

from __future__ import annotations

from typing import Any

from tr111.stats.inference import ALPHA, population, welch_from_stats
from tr111.stats.summary import DistributionSummary, rank_configs

QUALITY_MARGIN = 0.10  # overall score points below the baseline that count as "clearly below"
EMPTY = DistributionSummary.from_values([])


def entries(configs: list[dict], calls: dict[str, dict], runs: dict[str, dict]) -> list[dict]:
    """One entry per config in matrix order: its parameters and every per-config statistic."""
    out = []
    for c in configs:
        stats = calls.get(c["config_id"], {})
        run = runs.get(c["config_id"], {})
        out.append({
            "config_id": c["config_id"], "is_baseline": bool(c["is_baseline"]), "levels": c["levels"],
            "options_json": c.get("options_json"), "context_length": c.get("context_length"),
            "size_vram": c.get("size_vram"),
            "calls": stats.get("calls", 0), "runs": stats.get("runs", 0),
            "total_tokens": stats.get("total_tokens"), "cold_calls": stats.get("cold_calls", 0),
            "cold_load_ms": stats.get("cold_load_ms"), "warm_load_ms": stats.get("warm_load_ms"),
            "tps": stats.get("tps", EMPTY), "ttft": stats.get("ttft", EMPTY),
            "ttft_warm": stats.get("ttft_warm", EMPTY), "ttft_cold": stats.get("ttft_cold", EMPTY),
            "run_tps": run.get("tps"), "run_warm": run.get("warm"),
        })
    return out


def rankings(items: list[dict], top: int = 5) -> dict[str, list]:
    by = {e["config_id"]: e for e in items}

    def ranked(attr: str, *, descending: bool, metric: str) -> list[dict]:
        summaries = {cid: e[metric] for cid, e in by.items() if e[metric].n}
        return [{"rank": r.rank, "config_id": r.config_id, "value": r.value, "entry": by[r.config_id]}
                for r in rank_configs(summaries, attr=attr, descending=descending, top=top)]

    return {"throughput": ranked("mean", descending=True, metric="tps"),
            "ttft": ranked("mean", descending=False, metric="ttft_warm"),
            "consistency": ranked("cv_pct", descending=False, metric="tps")}


def standing(items: list[dict], metric: str, *, descending: bool) -> dict[str, int]:
    """Rank of every measured config on a metric's mean (1 = best), ties broken by config id."""
    measured = [e for e in items if e[metric].mean is not None]
    measured.sort(key=lambda e: ((-e[metric].mean if descending else e[metric].mean), e["config_id"]))
    return {e["config_id"]: i + 1 for i, e in enumerate(measured)}


def populations(items: list[dict]) -> dict[str, Any]:
    """Spread of the per-config means across configs (study §5.1, §5.2)."""
    out = {}
    for key in ("tps", "ttft_warm", "ttft_cold", "ttft"):
        out[key] = population({e["config_id"]: e[key].mean for e in items})
    return out


def spread_pct(low: float | None, high: float | None) -> float | None:
    """(max - min) / min x 100: how far the worst config mean is from the best."""
    if low is None or high is None or low == 0:
        return None
    return (high - low) / abs(low) * 100.0


def chimera(items: list[dict]) -> dict[str, Any]:
    """Baseline vs the best non-baseline config by throughput and by warm TTFT (Welch on run means)."""
    baseline = next((e for e in items if e["is_baseline"]), None)
    others = [e for e in items if not e["is_baseline"]]
    out: dict[str, Any] = {"baseline": baseline, "comparisons": []}
    if baseline is None or not others:
        return out
    picks = [("throughput", "tps", True), ("warm TTFT", "ttft_warm", False)]
    for label, metric, higher in picks:
        measured = [e for e in others if e[metric].mean is not None]
        if not measured:
            continue
        best = sorted(measured, key=lambda e: ((-e[metric].mean if higher else e[metric].mean),
                                              e["config_id"]))[0]
        tests = {}
        for key, run_key in (("tps", "run_tps"), ("ttft_warm", "run_warm")):
            a, b = best.get(run_key) or {}, baseline.get(run_key) or {}
            tests[key] = welch_from_stats(a.get("mean"), a.get("sd"), a.get("n") or 0,
                                          b.get("mean"), b.get("sd"), b.get("n") or 0, alpha=ALPHA)
        out["comparisons"].append({"by": label, "metric": metric, "best": best, "tests": tests})
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
    from tr111.stats.inference import t_ci

    return t_ci(q["overall"], q["overall_sd"], q["n"])


def recommendations(items: list[dict]) -> list:
    from tr111.report.recommend import ConfigSummary, recommendation_tiers

    summaries = []
    for e in items:
        if not e["tps"].n and not e["ttft_warm"].n:
            continue
        levels = e["levels"]
        summaries.append(ConfigSummary(
            config_id=e["config_id"], throughput=e["tps"], warm_ttft=e["ttft_warm"],
            num_gpu=levels.get("num_gpu"), num_ctx=levels.get("num_ctx"),
            temperature=levels.get("temperature"), is_baseline=e["is_baseline"]))
    return recommendation_tiers(summaries)


def gpu_rows(gpu: list[dict] | None, items: list[dict]) -> list[dict] | None:
    if gpu is None:
        return None
    by = {g["config_id"]: g for g in gpu}
    return [by.get(e["config_id"], {"config_id": e["config_id"], "calls": 0}) for e in items]
