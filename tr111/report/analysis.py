"""Parameter sensitivity, main effects and interactions (report sections 6.x).

Observations are run means (runs are the replicates), the baseline is not a
level of any factor, throughput uses every successful call and TTFT only warm
calls. Every "significant" comes from an ANOVA p-value below ALPHA.
"""

from __future__ import annotations

import itertools
from typing import Any

from tr111.report import queries
from tr111.stats.inference import ALPHA, Anova, Cell, anova_cells, cell_summary, level_table, merge_cells

METRICS = (
    {"key": "tps", "name": "throughput", "label": "Throughput", "unit": "tok/s", "higher_is_better": True},
    {"key": "warm", "name": "warm TTFT", "label": "Warm TTFT", "unit": "ms", "higher_is_better": False},
)
PARAM_LABELS = {"num_gpu": "GPU layers (num_gpu)", "num_ctx": "Context size (num_ctx)",
                "temperature": "Temperature (temperature)"}


def param_label(name: str) -> str:
    return PARAM_LABELS.get(name, f"`{name}`")


def swept_factors(matrix: dict, configs: list[dict]) -> list[str]:
    """Grid parameters with two or more levels among the non-baseline configs, in grid order."""
    grid = list((matrix.get("grid") or {}).keys())
    out = []
    for name in grid:
        levels = {c["levels"].get(name) for c in configs if not c["is_baseline"]}
        levels.discard(None)
        if len(levels) >= 2:
            out.append(name)
    return out


def _term_dict(term) -> dict:
    return {"term": term.term, "factors": term.factors, "label": " × ".join(term.factors),
            "order": term.order, "df": term.df, "sum_sq": term.sum_sq, "mean_sq": term.mean_sq,
            "f_value": term.f_value, "p_value": term.p_value, "significant": term.significant,
            "partial_eta_sq": term.partial_eta_sq}


def _anova_dict(result: Anova, metric: dict) -> dict:
    return {"metric": metric, "tested": result.tested, "n_obs": result.n_obs, "factors": result.factors,
            "dropped": result.dropped, "order": result.order, "df_resid": result.df_resid,
            "ss_resid": result.ss_resid, "r_squared": result.r_squared, "note": result.note,
            "terms": [_term_dict(t) for t in result.terms],
            "main": [_term_dict(t) for t in result.main_effects],
            "interactions": [_term_dict(t) for t in result.interactions],
            "significant": [t.term for t in result.terms if t.significant]}


def _levels(cells: list[Cell], index: int) -> dict[Any, dict]:
    out = {}
    for level, pooled in level_table(cells, index):
        n_configs = sum(1 for c in cells if c.levels[index] == level)
        out[level] = {"summary": cell_summary(pooled), "configs": n_configs}
    return out


def _delta(level_means: list[float]) -> tuple[float | None, float | None]:
    """max - min of the level means, and that as % of the lower one (tr111.effects.sensitivity)."""
    if len(level_means) < 2:
        return None, None
    high, low = max(level_means), min(level_means)
    return high - low, ((high - low) / abs(low) * 100.0 if low else None)


def parameter_effects(configs: list[dict], runs: dict[str, dict], matrix: dict,
                      max_order: int = 3) -> dict:
    """Sensitivity per parameter, the ANOVA of each metric, and two-way cell-mean tables."""
    factors = swept_factors(matrix, configs)
    out: dict[str, Any] = {"factors": factors, "anova": {}, "sensitivity": [], "pairs": [],
                           "alpha": ALPHA}
    cell_sets = {m["key"]: queries.cells(configs, runs, m["key"], factors) for m in METRICS}
    if not factors:
        return out
    results = {}
    for metric in METRICS:
        result = anova_cells(cell_sets[metric["key"]], factors, metric["name"], max_order=max_order)
        results[metric["key"]] = result
        out["anova"][metric["key"]] = _anova_dict(result, metric)
    for i, factor in enumerate(factors):
        per_metric = {m["key"]: _levels(cell_sets[m["key"]], i) for m in METRICS}
        levels = sorted(set().union(*[set(v) for v in per_metric.values()]), key=_sort_key)
        rows = []
        for level in levels:
            row = {"level": level}
            for m in METRICS:
                entry = per_metric[m["key"]].get(level)
                row[m["key"]] = entry["summary"] if entry else None
                row["configs"] = max(row.get("configs", 0), entry["configs"] if entry else 0)
            rows.append(row)
        item = {"parameter": factor, "label": param_label(factor), "levels": rows, "effects": {}}
        for m in METRICS:
            means = [r[m["key"]].mean for r in rows if r[m["key"]] is not None and r[m["key"]].mean is not None]
            delta, pct = _delta(means)
            term = results[m["key"]].term(factor)
            best = None
            if means:
                pick = max if m["higher_is_better"] else min
                best = pick((r for r in rows if r[m["key"]] is not None and r[m["key"]].mean is not None),
                            key=lambda r: r[m["key"]].mean)["level"]
            item["effects"][m["key"]] = {"delta": delta, "delta_pct": pct, "best_level": best,
                                         "term": _term_dict(term) if term else None}
        out["sensitivity"].append(item)
    for a, b in itertools.combinations(range(len(factors)), 2):
        out["pairs"].append(_pair(cell_sets, factors, a, b, results))
    return out


def _pair(cell_sets: dict, factors: list[str], a: int, b: int, results: dict) -> dict:
    """Mean of the run means per (level of a, level of b): the table behind an interaction."""
    tables = {}
    for m in METRICS:
        cells = cell_sets[m["key"]]
        rows_a = sorted({c.levels[a] for c in cells}, key=_sort_key)
        cols_b = sorted({c.levels[b] for c in cells}, key=_sort_key)
        grid = []
        for la in rows_a:
            line = []
            for lb in cols_b:
                group = [c for c in cells if c.levels[a] == la and c.levels[b] == lb]
                line.append(merge_cells(group).mean if group else None)
            grid.append({"level": la, "values": line})
        term = results[m["key"]].term(factors[a], factors[b])
        tables[m["key"]] = {"rows": grid, "columns": cols_b,
                            "term": _term_dict(term) if term else None}
    return {"a": factors[a], "b": factors[b], "tables": tables}


def _sort_key(value: Any):
    return (0, float(value), "") if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else (1, 0.0, str(value))
