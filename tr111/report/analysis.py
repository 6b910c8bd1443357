"""Parameter sensitivity, main effects and interactions (report sections 6.x), per measure.

Observations are the logs of run means (runs are the replicates; effects on
times and rates are multiplicative), one measure = one metric at one stage
(tr111.report.metrics), the baseline is not a level of any factor, and TTFT
uses only warm calls of configs whose prompt was not truncated. Level and
cell means are geometric means. Every "significant" comes from an ANOVA
p-value below ALPHA.
"""

from __future__ import annotations

import itertools
from typing import Any

from tr111.report import queries
from tr111.report.metrics import MEASURES
from tr111.stats.inference import ALPHA, Anova, Cell, anova_cells, cell_summary, level_table, merge_cells

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


def _anova_dict(result: Anova, measure, excluded: list[str]) -> dict:
    return {"metric": measure, "tested": result.tested, "n_obs": result.n_obs, "factors": result.factors,
            "dropped": result.dropped, "order": result.order, "df_resid": result.df_resid,
            "ss_resid": result.ss_resid, "r_squared": result.r_squared, "note": result.note,
            "excluded": excluded, "terms": [_term_dict(t) for t in result.terms],
            "main": [_term_dict(t) for t in result.main_effects],
            "interactions": [_term_dict(t) for t in result.interactions],
            "significant": [t.term for t in result.terms if t.significant]}


def _delta(level_means: list[float]) -> tuple[float | None, float | None]:
    """max - min of the level means, and that as % of the lower one (tr111.effects.sensitivity)."""
    if len(level_means) < 2:
        return None, None
    high, low = max(level_means), min(level_means)
    return high - low, ((high - low) / abs(low) * 100.0 if low else None)


def truncated_configs(entries: list[dict], stage: str) -> list[str]:
    """Configs with a truncated prompt at ``stage``: left out of TTFT effects (a shorter prompt)."""
    return [e["config_id"] for e in entries if e["stages"][stage]["truncated"]]


def parameter_effects(configs: list[dict], runs: dict[str, dict], matrix: dict, entries: list[dict],
                      max_order: int = 3, ignored: set[str] | frozenset = frozenset()) -> dict:
    """Sensitivity per parameter, the ANOVA of each measure, and two-way cell-mean tables.

    ``ignored``: swept options the server did not apply (tr111.report.conditions); they are
    named in the report and left out of the analysis instead of being tested as treatments.
    """
    factors = [f for f in swept_factors(matrix, configs) if f not in ignored]
    out: dict[str, Any] = {"factors": factors, "anova": {}, "sensitivity": [], "pairs": [],
                           "alpha": ALPHA, "measures": MEASURES, "ignored": sorted(ignored)}
    if not factors:
        return out
    excluded = {m.key: truncated_configs(entries, m.stage) if m.metric.same_prompt else [] for m in MEASURES}
    cell_sets = {m.key: queries.cells(configs, runs, m.key, factors, set(excluded[m.key])) for m in MEASURES}
    results = {}
    for m in MEASURES:
        result = anova_cells(cell_sets[m.key], factors, m.name, max_order=max_order)
        results[m.key] = result
        out["anova"][m.key] = _anova_dict(result, m, excluded[m.key])
    for i, factor in enumerate(factors):
        levels = sorted({c["levels"].get(factor) for c in configs if not c["is_baseline"]} - {None},
                        key=_sort_key)
        rows = []
        for m in MEASURES:
            pooled = dict(level_table(cell_sets[m.key], i))
            cells = [cell_summary(pooled[lv]) if lv in pooled else None for lv in levels]
            measured = {lv: c.geo_mean for lv, c in zip(levels, cells) if c is not None and c.geo_mean is not None}
            delta, pct = _delta(list(measured.values()))
            pick = max if m.higher_is_better else min
            best = pick(measured, key=measured.get) if measured else None
            term = results[m.key].term(factor)
            rows.append({"measure": m, "cells": cells, "delta": delta, "delta_pct": pct, "best_level": best,
                         "term": _term_dict(term) if term else None})
        configs_per_level = [sum(1 for c in configs if not c["is_baseline"] and c["levels"].get(factor) == lv)
                             for lv in levels]
        out["sensitivity"].append({"parameter": factor, "label": param_label(factor), "levels": levels,
                                   "configs": configs_per_level, "rows": rows})
    for a, b in itertools.combinations(range(len(factors)), 2):
        out["pairs"].append(_pair(cell_sets, factors, a, b, results))
    return out


def _pair(cell_sets: dict, factors: list[str], a: int, b: int, results: dict) -> dict:
    """Geometric mean of the run means per (level of a, level of b): the table behind an interaction."""
    tables = []
    for m in MEASURES:
        cells: list[Cell] = cell_sets[m.key]
        rows_a = sorted({c.levels[a] for c in cells}, key=_sort_key)
        cols_b = sorted({c.levels[b] for c in cells}, key=_sort_key)
        grid = []
        for la in rows_a:
            line = []
            for lb in cols_b:
                group = [c for c in cells if c.levels[a] == la and c.levels[b] == lb]
                line.append(cell_summary(merge_cells(group)).geo_mean if group else None)
            grid.append({"level": la, "values": line})
        term = results[m.key].term(factors[a], factors[b])
        tables.append({"measure": m, "rows": grid, "columns": cols_b, "term": _term_dict(term) if term else None})
    return {"a": factors[a], "b": factors[b], "tables": tables}


def _sort_key(value: Any):
    return (0, float(value), "") if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else (1, 0.0, str(value))
