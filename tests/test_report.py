"""The technical report on a fixture warehouse with planted effects: sections, numbers, verdicts.

Every number checked here is recomputed from the raw rows with pandas, scipy and
the statsmodels oracles (tests/oracles), then compared with the rendered
markdown; the per-stage figures are also checked against the timings the
fixture planted (tests/fixtures_report.py, ``stages=True``): the analysis and
the report call have different, known prompt sizes, prefill rates and TTFTs.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats as sps

from fixtures_report import (BASE_TPS, CONFIGS, CTX_EFFECT, OVERHEAD_MS, POOR_CONFIG, SLOW_FACTOR,
                             STAGE_DECODE_FACTOR, STAGE_PREFILL_TPS, STAGE_PROMPT_TOKENS, START, TRUNCATED_TOKENS,
                             PREFILL_EFFECT, build_sweep, expected_warm_ttft)
from oracles.effects import anova, welch_compare
from tr111.report.service import generate
from tr111.stats.summary import population_summary
from tr111.warehouse import open_read_only

SLOW = "ctx512_temp0p6"
TRUNC = "ctx512_temp0p8"  # its analysis prompts were truncated in night-2
STAGES = ("analysis", "report")
MARK = "⚠ truncated"
SECTIONS = [
    "Executive summary", "Table of contents", "1. Introduction and objectives",
    "2. Methodology and test environment", "3. Configuration matrix", "4. Aggregate performance analysis",
    "5. Statistical analysis", "6. Parameter sensitivity analysis", "7. Quality assessment",
    "8. Baseline vs best configuration (chimera)", "9. GPU telemetry and energy", "10. Recommendations",
    "11. Nightly regression check", "12. Runs and faults", "13. Conclusions", "14. Limitations",
    "15. Appendices",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = root / "wh.duckdb"
    # night-2 (the report) has clean planted effects; SLOW ran 1/0.9 faster the night before, so
    # night-2 shows it 10% slower than night-1: the nightly regression to flag
    build_sweep(path, "night-1", seed=1, started_at=START, scale={SLOW: 1 / SLOW_FACTOR}, stages=True)
    build_sweep(path, "night-2", seed=10, started_at=START + timedelta(days=1), failed_attempt=True, stages=True,
                truncate=(TRUNC,))
    outcome = generate(path, "night-2", root / "out", "templates", threshold_pct=5.0)
    report, ctx = outcome.path, outcome.context
    with open_read_only(path) as con:
        calls = con.execute("""SELECT s.*, g.num_ctx AS cfg_num_ctx, g.temperature AS cfg_temperature
                               FROM stat_calls s JOIN configs g USING (sweep_id, config_id)
                               WHERE sweep_id = 'night-2'""").df()
        previous = con.execute("SELECT * FROM stat_calls WHERE sweep_id = 'night-1'").df()
        scores = con.execute("SELECT * FROM quality_scores WHERE sweep_id = 'night-2'").df()
    # the swept levels come from configs (llm_calls.num_ctx is the context in effect, set for all)
    calls = calls.drop(columns=[c for c in ("num_ctx", "temperature") if c in calls.columns])
    calls = calls.rename(columns={"cfg_num_ctx": "num_ctx", "cfg_temperature": "temperature"})
    calls["prefill_tps"] = calls["prompt_eval_count"] / calls["prompt_eval_duration_ms"] * 1000.0
    calls["overhead_ms"] = calls["ttft_ms"] - calls["load_duration_ms"] - calls["prompt_eval_duration_ms"]
    return {"path": path, "root": root, "report": report, "text": report.read_text(), "ctx": ctx,
            "calls": calls, "previous": previous, "scores": scores}


# --------------------------------------------------------------------------- helpers


def number(cell: str) -> float | None:
    cell = cell.strip().strip("*`").replace(",", "")
    if cell in ("n/a", "—", ""):
        return None
    if cell.startswith("<"):
        return 0.0
    return float(cell)


def interval(cell: str) -> tuple[float, float] | None:
    if cell.strip() == "n/a":
        return None
    low, high = cell.strip().strip("[]").split(", ")
    return number(low), number(high)


def close(printed, expected, digits=2):
    """The printed value is ``expected`` rounded to ``digits`` decimals."""
    if expected is None or (isinstance(expected, float) and np.isnan(expected)):
        return printed is None
    return printed is not None and abs(printed - expected) <= 0.5 * 10 ** -digits + 1e-9 * abs(expected)


def geo_cell(cell: str) -> tuple[float, tuple[float, float] | None]:
    """"84.12 [83.01, 85.26]" -> (84.12, (83.01, 85.26)); "1,488.62 n too small" -> (1488.62, None)."""
    value, _, rest = cell.strip().partition(" ")
    rest = rest.split(" (n=")[0]
    return number(value), (None if rest == "n too small" else interval(rest))


def log_interval(values):
    """scipy's t interval of the logs, back-transformed: the oracle of every printed interval."""
    logs = np.log(np.asarray(values, dtype=float))
    low, high = sps.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=sps.sem(logs))
    return float(np.exp(low)), float(np.exp(high))


def table(text: str, header_start: str) -> list[list[str]]:
    """Rows (cells) of the first markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def by_config(rows):
    return {r[0].split("`")[1]: r for r in rows}


def by_config_stage(rows):
    return {(r[0].split("`")[1], r[1]): r for r in rows}


def stage_calls(calls, stage, warm_only=False):
    frame = calls[calls["stage"] == stage]
    return frame[~frame["is_cold"].astype(bool)] if warm_only else frame


def log_run_means(calls, metric, stage, warm_only=False, exclude=()):
    """One row per run: its levels and y = ln(mean of the run's calls at ``stage``)."""
    frame = stage_calls(calls, stage, warm_only)
    frame = frame[~frame["config_id"].isin(exclude)]
    out = frame.groupby(["config_id", "run_number", "num_ctx", "temperature"], dropna=False,
                        as_index=False)[metric].mean()
    return out.assign(y=np.log(out[metric]))


MEASURES = [("decode", "throughput_tps", False), ("prefill", "prefill_tps", False), ("ttft", "ttft_ms", True)]
LABELS = {"decode": "Decode rate", "prefill": "Prefill rate", "ttft": "Warm TTFT"}


# --------------------------------------------------------------------------- structure


def test_every_section_in_the_studys_order(built):
    headings = [line[3:].strip() for line in built["text"].splitlines() if line.startswith("## ")]
    assert [h for h in headings if h in SECTIONS] == SECTIONS
    for needle in ("### Key findings", "### 2.1 Hardware and software", "### 4.4 Performance ranking",
                   "### 4.2 Time to first token per stage", "### 4.3 Decode and prefill rate per stage",
                   "### 5.1 Distribution across configurations", "### 5.2 TTFT cold vs warm, per stage",
                   "Interaction effects",
                   "### Appendix A: Statistical formulas", "### Appendix B: Raw data availability"):
        assert needle in built["text"]


def test_methodology_shows_the_environment_recorded_at_run_time(built):
    text = built["text"]
    for needle in ("NVIDIA Test GPU", "Driver: 550.00", "CPU: Test CPU", "OS: Linux-test", "Python: 3.11.7",
                   "Server: ollama 0.12.0", "Quantization: Q4_K_M", "Digest: " + "f" * 64):
        assert needle in text, needle


def test_plots_exist_beside_the_report_and_are_linked(built):
    folder = built["report"].parent
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", built["text"])
    assert set(links) >= {"rates_per_stage.png", "ttft_per_stage.png", "sensitivity_num_ctx.png",
                          "sensitivity_temperature.png", "trend.png"}
    for link in links:
        data = (folder / link).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    for config_id in CONFIGS:
        metrics = json.loads((folder / config_id / "metrics.json").read_text())
        assert metrics["config"]["config_id"] == config_id and len(metrics["runs"]) == 4
        assert len(metrics["llm_calls"]) == 8 + (config_id == CONFIGS[1])
        assert len(list((folder / config_id / "reports").glob("run*.md"))) == 4


# --------------------------------------------------------------------------- numbers vs raw rows


def test_tr111_columns_keep_the_studys_pooled_figures(built):
    rows = by_config(table(built["text"], "| Configuration | Calls | Runs | Truncated calls"))
    assert list(rows) == CONFIGS
    for config_id, group in built["calls"].groupby("config_id"):
        r = rows[config_id]
        assert int(r[1]) == len(group) and int(r[2]) == group["run_number"].nunique()
        assert int(r[3]) == int(group["truncated"].sum()) and int(r[4]) == group["eval_count"].sum()
        assert close(number(r[5]), group["throughput_tps"].mean())  # TR111: every call, both stages
        assert close(number(r[6]), group["ttft_ms"].mean())  # TR111: every call, cold included
        assert (MARK in r[0]) == (config_id == TRUNC)


def test_per_stage_ttft_and_its_parts_match_raw_rows_and_the_planted_timings(built):
    rows = by_config_stage(table(built["text"], "| Configuration | Stage | Warm calls | Prompt tokens"))
    assert len(rows) == 2 * len(CONFIGS)
    for (config_id, stage), r in rows.items():
        warm = stage_calls(built["calls"], stage, warm_only=True)
        warm = warm[warm["config_id"] == config_id]
        assert int(r[2]) == len(warm) and close(number(r[3]), warm["prompt_eval_count"].mean(), 0)
        assert close(number(r[4]), warm["ttft_ms"].mean()) and close(number(r[5]), warm["load_duration_ms"].mean())
        assert close(number(r[6]), warm["prompt_eval_duration_ms"].mean())
        assert close(number(r[7]), warm["overhead_ms"].mean())
        parts = number(r[5]) + number(r[6]) + number(r[7])
        assert parts == pytest.approx(number(r[4]), abs=0.02)  # load + prefill + overhead = mean TTFT
        geo, ci = geo_cell(r[8])
        assert close(geo, float(np.exp(np.log(warm["ttft_ms"]).mean())))
        assert all(close(a, b) for a, b in zip(ci, log_interval(warm["ttft_ms"])))
        # the timings the fixture planted, per stage
        ctx = 1024 if "ctx1024" in config_id else None
        truncated = stage == "analysis" and config_id == TRUNC
        tokens = TRUNCATED_TOKENS if truncated else STAGE_PROMPT_TOKENS[stage]
        assert number(r[3]) == tokens and (MARK in r[0]) == truncated
        assert geo == pytest.approx(expected_warm_ttft(stage, ctx, tokens), rel=0.03)
        assert number(r[7]) == pytest.approx(OVERHEAD_MS, abs=0.5)
    analysis = number(rows[("baseline_default", "analysis")][4])
    report = number(rows[("baseline_default", "report")][4])
    assert analysis > 2.5 * report  # the two stages are different quantities: never pooled


def test_per_stage_rates_match_raw_rows_and_the_planted_rates(built):
    rows = by_config_stage(table(built["text"], "| Configuration | Stage | Calls | Decode rate"))
    for (config_id, stage), r in rows.items():
        group = stage_calls(built["calls"], stage)
        group = group[group["config_id"] == config_id]
        assert int(r[2]) == len(group)
        for cell, cv, column in ((r[3], r[4], "throughput_tps"), (r[5], r[6], "prefill_tps")):
            values = group[column]
            geo, ci = geo_cell(cell)
            assert close(geo, float(np.exp(np.log(values).mean())))
            assert all(close(a, b) for a, b in zip(ci, log_interval(values)))
            assert close(number(cv), values.std(ddof=1) / values.mean() * 100)
        ctx = 1024 if "ctx1024" in config_id else None
        decode = BASE_TPS * STAGE_DECODE_FACTOR[stage] * (1 + CTX_EFFECT if ctx else 1.0)
        prefill = STAGE_PREFILL_TPS[stage] * (1 + PREFILL_EFFECT if ctx else 1.0)
        assert geo_cell(r[3])[0] == pytest.approx(decode, rel=0.02)
        assert geo_cell(r[5])[0] == pytest.approx(prefill, rel=0.02)  # truncated or not: per token


def test_cold_and_warm_ttft_per_stage_with_percentiles_match(built):
    rows = by_config_stage(table(built["text"], "| Configuration | Stage | Warm n | Warm TTFT"))
    for (config_id, stage), r in rows.items():
        group = stage_calls(built["calls"], stage)
        group = group[group["config_id"] == config_id]
        cold_mask = group["is_cold"].astype(bool)
        warm, cold = group.loc[~cold_mask, "ttft_ms"], group.loc[cold_mask, "ttft_ms"]
        assert int(r[2]) == len(warm) and int(r[6]) == len(cold) == (1 if stage == "analysis" else 0)
        assert close(number(r[4]), np.percentile(warm, 50)) and close(number(r[5]), np.percentile(warm, 95))
        if stage == "analysis":
            geo, ci = geo_cell(r[7])
            assert close(geo, cold.iloc[0]) and ci is None and r[7].endswith("n too small")  # one cold call
            assert close(number(r[8]), group.loc[cold_mask, "load_duration_ms"].mean())
            assert geo > 3 * geo_cell(r[3])[0]  # the planted load is visible, not averaged away
        else:
            assert r[7] == "n/a"


def test_population_statistics_match(built):
    calls = built["calls"]
    rows = {r[0]: r for r in table(built["text"], "| Measure | Configs | Mean of config means")}
    for key, column, warm_only in MEASURES:
        for stage in STAGES:
            frame = stage_calls(calls, stage, warm_only)
            if key == "ttft" and stage == "analysis":
                frame = frame[frame["config_id"] != TRUNC]  # a truncated TTFT is not compared
            geo = frame.groupby("config_id")[column].apply(lambda v: float(np.exp(np.log(v).mean())))
            pop = population_summary(geo.to_dict())
            r = rows[f"{LABELS[key]} ({stage}) ({'ms' if key == 'ttft' else 'tok/s'})"]
            assert int(r[1]) == pop.n and close(number(r[2]), pop.mean) and close(number(r[4]), pop.median)
            assert all(close(a, b) for a, b in zip(interval(r[3]), log_interval(geo.to_numpy())))
            assert close(number(r[5].split()[0]), pop.min) and close(number(r[6].split()[0]), pop.max)
            assert close(number(r[8]), pop.cv_pct, 1)


def test_anova_of_log_run_means_finds_the_planted_effect(built):
    calls = built["calls"]
    text = built["text"]
    for key, column, warm_only in MEASURES:
        for stage in STAGES:
            exclude = (TRUNC,) if key == "ttft" and stage == "analysis" else ()
            obs = log_run_means(calls, column, stage, warm_only, exclude)
            ref = anova(obs, "y", ("num_ctx", "temperature"), unit="call")
            block = text.split(f"**ANOVA of {LABELS[key].lower().replace('warm ttft', 'warm TTFT')} ({stage})**", 1)[1]
            rows = {r[0]: r for r in table(block, "| Term |")}
            assert ref.row("num_ctx").significant and rows["num_ctx"][6] == "significant"
            for row in ref.rows:
                label = row.term.replace(":", " × ")
                r = rows[label]
                assert int(r[1]) == row.df and close(number(r[2]), row.sum_sq, 6)
                assert close(number(r[3]), row.f_value) and close(number(r[5]), row.partial_eta_sq, 3)
                assert close(number(r[4]), row.p_value, 4) if row.p_value >= 1e-4 else r[4] == "< 0.0001"
                assert r[6] == ("significant" if row.p_value < 0.05 else "not significant")
            assert close(number(rows["Residual"][2]), ref.ss_resid, 6)
            if exclude:
                assert f"left out, {MARK}: {TRUNC}" in text.split(f"**ANOVA of warm TTFT ({stage})**", 1)[1][:200]
    assert "F(1, 12) = " in text


def test_sensitivity_levels_are_geometric_means_of_run_means(built):
    calls = built["calls"]
    text = built["text"].split("### 6.1", 1)[1].split("### 6.2", 1)[0]
    rows = {r[0]: r for r in table(text, "| Measure | num_ctx = 512")}
    for key, column, warm_only in MEASURES:
        for stage in STAGES:
            exclude = (TRUNC,) if key == "ttft" and stage == "analysis" else ()
            obs = log_run_means(calls, column, stage, warm_only, exclude)
            r = rows[f"{LABELS[key]} ({stage}) ({'ms' if key == 'ttft' else 'tok/s'})"]
            for cell, level in ((r[1], 512), (r[2], 1024)):
                y = obs.loc[obs["num_ctx"] == level, "y"]
                geo, ci = geo_cell(cell)
                assert close(geo, float(np.exp(y.mean()))) and cell.endswith(f"(n={len(y)})")
                assert all(close(a, b) for a, b in zip(ci, log_interval(np.exp(y))))
            low, high = geo_cell(r[2])[0], geo_cell(r[1])[0]
            if key == "decode":
                assert (high - low) / high == pytest.approx(-CTX_EFFECT, abs=0.01)  # the planted -8%
            if key == "ttft":
                assert low / high == pytest.approx(1 / (1 + PREFILL_EFFECT), rel=0.04)  # 1024 is ~25% slower


def test_chimera_is_welch_on_log_run_means_and_says_each_best_once(built):
    calls = built["calls"]
    text = built["text"].split("## 8.", 1)[1].split("## 9.", 1)[0]
    comparisons = built["ctx"].chimera["comparisons"]
    bests = [c["best"]["config_id"] for c in comparisons]
    assert len(bests) == len(set(bests)) and TRUNC not in bests  # once each; a truncated config never
    first = comparisons[0]
    best = first["best"]["config_id"]
    assert f"### 8.1 `{best}`: best by " + ", ".join(m.name for m in first["by"]) in text
    rows = {r[0]: r for r in table(text, "| Measure | Baseline")}
    for key, column, warm_only in MEASURES:
        for stage in STAGES:
            means = log_run_means(calls, column, stage, warm_only)
            a = means.loc[means["config_id"] == best, "y"].tolist()
            b = means.loc[means["config_id"] == "baseline_default", "y"].tolist()
            ref = welch_compare(a, b)
            r = rows[f"{LABELS[key]} ({stage}) ({'ms' if key == 'ttft' else 'tok/s'})"]
            assert close(number(r[3]), (np.exp(ref.diff) - 1) * 100) and close(number(r[5]), ref.t)
            assert close(number(r[7]), ref.p_value, 4) if ref.p_value >= 1e-4 else r[7] == "< 0.0001"
            low, high = (float(x.strip("[]%")) for x in r[4].split(", "))
            assert low == pytest.approx((np.exp(ref.ci95_low) - 1) * 100, abs=0.051)
            assert high == pytest.approx((np.exp(ref.ci95_high) - 1) * 100, abs=0.051)
            assert r[9] == ("significant" if ref.p_value < 0.05 else "not significant")


def test_no_printed_interval_of_a_positive_quantity_goes_below_zero(built):
    checked = 0
    for line in built["text"].splitlines():
        for low, high in re.findall(r"\[(-?[\d,.]+), (-?[\d,.]+)\]", line):
            assert number(low) >= 0 and number(high) >= number(low), line
            checked += 1
        for low, _ in re.findall(r"95% CI (-?[\d,.]+)–(-?[\d,.]+)", line):
            assert number(low) >= 0, line
    assert checked > 100


def test_quality_is_scored_stored_once_and_the_poor_config_called_out(built):
    from tr111.report.quality import score_report
    from tr111.report.scoring import count_pending

    scores, calls = built["scores"], built["calls"]
    assert len(scores) == 20 and set(scores["stage"]) == {"report"}
    with open_read_only(built["path"]) as con:
        assert count_pending(con, "night-2") == 0  # a second report scores nothing
        prompt = con.execute("SELECT prompt FROM llm_calls WHERE sweep_id = 'night-2' AND stage = 'analysis'"
                             " AND config_id = ? AND run_number = 1", [POOR_CONFIG]).fetchone()[0]
    poor = calls[(calls["config_id"] == POOR_CONFIG) & (calls["stage"] == "report")]["response"].iloc[0]
    expected = score_report(poor, source_text=prompt)
    stored = scores[(scores["config_id"] == POOR_CONFIG) & (scores["run_number"] == 1)].iloc[0]
    assert stored["overall"] == pytest.approx(expected.overall)
    rows = by_config(table(built["text"], "| Configuration | Reports | Overall"))
    for config_id, group in scores.groupby("config_id"):
        assert close(number(rows[config_id][2]), group["overall"].mean(), 3)
        assert close(number(rows[config_id][6]), group["numeric_grounding"].mean(), 3)
    assert "**below**" in rows[POOR_CONFIG][9]
    assert all("below" not in r[9] for c, r in rows.items() if c != POOR_CONFIG)
    assert f"**Called out:** `{POOR_CONFIG}`" in built["text"]
    good = scores[scores["config_id"] == "baseline_default"].iloc[0]
    assert good["sections_present"] == 1.0 and good["numeric_grounding"] == 1.0


def test_regression_section_flags_the_slowed_config_per_stage_and_no_other(built):
    from oracles.regression import STAGE_METRICS, detect_regressions

    text = built["text"].split("## 11.", 1)[1].split("### 11.1", 1)[0]
    rows = table(text, "| Configuration | Measure | Before")
    assert len(rows) == 4 * len(CONFIGS)  # per config: decode rate and warm TTFT of each stage
    ref = {(c.config_id, c.metric): c
           for c in detect_regressions(built["previous"], built["calls"], metrics=STAGE_METRICS)}
    column = {"Decode rate": "throughput_tps", "Warm TTFT": "ttft_ms"}
    for r in rows:
        config_id = r[0].strip("`")
        label, stage = re.match(r"(.+) \((\w+)\), ", r[1]).groups()
        expected = ref[(config_id, f"{column[label]}:{stage}")]
        if config_id == TRUNC and label == "Warm TTFT" and stage == "analysis":
            # night-2 truncated this prompt, night-1 did not: different prompts, no verdict
            assert r[4] == "n/a" and r[5] == "no change" and expected.improvement
            continue
        assert close(number(r[3]), expected.change_pct) and r[2].startswith(f"{expected.baseline_mean:,.2f} →")
        assert ("REGRESSION" in r[5]) == expected.regression == (config_id == SLOW and label == "Decode rate")
    assert f"**Flagged regressions (1):** `{SLOW}`." in text
    summary = json.loads((built["report"].parent / "summary.json").read_text())
    assert summary["regressions"]["flagged"] == [SLOW] and summary["regressions"]["previous"] == "night-1"
    trunc = next(r for r in summary["regressions"]["rows"] if r["config_id"] == TRUNC)
    assert "truncated" in trunc["warm_ttft_ms"]["analysis"]["note"]


CLAIMS = [  # (regex, group of the p-value, group of the verdict); "< 0.0001" reads as p = 0
    (re.compile(r"\b(not significant|significant) \([^)]*?\bp (= ([\d.]+)|< 0\.0001)\)"), 3, 1),
    (re.compile(r"\bp (= ([\d.]+)|< 0\.0001), (not significant|significant)\b"), 2, 3),
    (re.compile(r"\bp (= ([\d.]+)|< 0\.0001), partial η² = [\d.]+: \*\*(not significant|significant)\*\*"), 2, 3),
    (re.compile(r"\bp=([\d.e-]+), (not significant|significant)\b"), 1, 2),
]
EXPLANATIONS = ("called *significant* only when", "A config is flagged", "significant (p < 0.05) and",
                "when a change is significant", "change that is significant", "every other term is not",
                "Significant interaction")


def test_significant_is_only_said_where_p_is_below_alpha(built):
    checked = 0
    for line in built["text"].splitlines():
        claims = len(re.findall(r"(?<!not )\bsignificant\b", line))
        if not claims or any(e in line for e in EXPLANATIONS):
            continue
        covered = 0
        if line.startswith("|") and line.rstrip(" |").endswith("significant"):  # ANOVA / chimera rows
            cells = [c.strip() for c in line.strip("| ").split("|")]
            p = number([c for c in cells if re.fullmatch(r"[01]\.\d{4}|< 0\.0001", c)][-1])
            assert (cells[-1] == "significant") == (p < 0.05), line
            covered += cells[-1] == "significant"
        for pattern, p_group, verdict_group in CLAIMS:
            for match in pattern.finditer(line):
                p = float(match.group(p_group)) if match.group(p_group) else 0.0
                assert (match.group(verdict_group) == "significant") == (p < 0.05), line
                covered += match.group(verdict_group) == "significant"
        assert covered >= claims, f"a 'significant' without its p-value: {line}"
        checked += 1
    assert checked >= 5


def test_recommendations_come_from_the_data_and_never_pick_the_truncated_config(built):
    ctx, calls, text = built["ctx"], built["calls"], built["text"]
    tiers = {t.key: t for t in ctx.recommendations}
    assert all(t.config_id != TRUNC for t in tiers.values())
    for stage in STAGES:
        tier = tiers[f"best_decode_{stage}"]
        frame = stage_calls(calls, stage)
        geo = frame[frame["config_id"] != TRUNC].groupby("config_id")["throughput_tps"].apply(
            lambda v: float(np.exp(np.log(v).mean())))
        assert f"{geo.idxmax()} has the highest geometric-mean decode rate ({stage})" in tier.rationale
        assert tier.config_id == geo.idxmax() or geo.idxmax() in tier.tied  # the best, or one tied with it
        assert f"not considered: {TRUNC} (⚠ truncated prompt, analysis)" in tier.rationale
    # the truncated config has by far the shortest analysis TTFT, and it is not the pick
    warm = stage_calls(calls, "analysis", warm_only=True).groupby("config_id")["ttft_ms"].mean()
    assert warm.idxmin() == TRUNC and tiers["best_ttft_analysis"].config_id != TRUNC
    section = text.split("## 10.", 1)[1].split("## 11.", 1)[0]
    headings = [line for line in section.splitlines() if line.startswith("### 10.")]
    picked = [re.search(r"`([^`]+)`$", h).group(1) for h in headings if h.endswith("`")]
    assert len(picked) == len(set(picked))  # a config best on several tiers is listed once
    assert f"({TRUNC} set aside)" in section


def test_truncated_config_is_marked_wherever_it_is_ranked(built):
    text = built["text"]
    ranking = text.split("### 4.4", 1)[1].split("## 5.", 1)[0]
    assert f"`{TRUNC}` {MARK}:" in ranking.split("by decode rate (analysis)", 1)[1].split("**Top", 1)[0]
    ttft = ranking.split("by warm TTFT (analysis)", 1)[1].split("**Top", 1)[0]
    assert f"`{TRUNC}`" not in ttft.split("Not ranked", 1)[0]  # not ranked by TTFT ...
    assert f"Not ranked by warm TTFT (analysis) ({MARK}, a shorter prompt): `{TRUNC}`" in ttft  # ... but named
    assert f"{MARK}: the server truncated this config's prompt" in text  # the footnote
    assert f"**{MARK.replace('truncated', 'Truncated prompts:')}** `{TRUNC}` (4 call(s), analysis)" in text
    faults = text.split("## 12.", 1)[1]
    assert f"| `{TRUNC}` | analysis | 4 | 4 | {TRUNCATED_TOKENS} | prompt exceeds num_ctx=512" in faults


def test_gpu_section_says_no_telemetry_when_none_recorded(built):
    assert "No GPU telemetry recorded" in built["text"].split("## 9.", 1)[1].split("## 10.", 1)[0]


def test_gpu_section_with_telemetry(tmp_path):
    import duckdb

    path = tmp_path / "wh.duckdb"
    build_sweep(path, "g", seed=4, runs=2)
    con = duckdb.connect(str(path))
    have = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns"
                                      " WHERE table_name = 'llm_calls'").fetchall()}
    for column, kind in (("gpu_name", "VARCHAR"), ("gpu_mem_peak_mb", "DOUBLE"), ("gpu_util_mean_pct", "DOUBLE"),
                         ("gpu_power_mean_w", "DOUBLE"), ("gpu_energy_j", "DOUBLE"), ("gpu_energy_source", "VARCHAR")):
        if column not in have:
            con.execute(f"ALTER TABLE llm_calls ADD COLUMN {column} {kind}")
    con.execute("UPDATE llm_calls SET gpu_name = 'NVIDIA H100', gpu_mem_peak_mb = 4000 + run_number,"
                " gpu_util_mean_pct = 80, gpu_power_mean_w = 300, gpu_energy_j = 50, gpu_energy_source = 'counter'")
    expected = con.execute("SELECT sum(gpu_energy_j) / sum(eval_count) FROM llm_calls"
                           " WHERE config_id = 'baseline_default'").fetchone()[0]
    con.close()
    report = generate(path, "g", tmp_path / "out", "templates").path
    section = report.read_text().split("## 9.", 1)[1].split("## 10.", 1)[0]
    rows = by_config(table(section, "| Configuration | GPU |"))
    r = rows["baseline_default"]
    assert r[1] == "NVIDIA H100" and int(r[2]) == 4 and number(r[3]) == 4002
    assert close(number(r[7]), expected, 3) and r[8] == "counter"


def test_model_output_is_data_never_a_template(tmp_path):
    import duckdb

    path = tmp_path / "wh.duckdb"
    build_sweep(path, "x", seed=5, runs=2, failed_attempt=True)
    con = duckdb.connect(str(path))
    con.execute("""UPDATE llm_calls SET response = '{{ "ab" * 3 }} {% for x in y %}| pipe'
                   WHERE stage = 'report'""")
    con.close()
    report = generate(path, "x", tmp_path / "out", "templates").path
    run_report = (report.parent / "baseline_default" / "reports" / "run1_attempt1.md").read_text()
    assert '{{ "ab" * 3 }} {% for x in y %}| pipe' in run_report and "ababab" not in run_report
    text = report.read_text()
    assert "HTTP 500 \\| boom" in text  # error text escaped inside a table cell


def test_report_command_imports_no_prefect_pandas_or_statsmodels(built):
    import subprocess
    import sys

    code = ("import sys; from tr111.cli import main; rc = main(['report', '--sweep', 'night-1', '--warehouse', "
            f"{str(built['path'])!r}, '--out', {str(built['root'] / 'light')!r}]); "
            "heavy = [m for m in ('prefect', 'pandas', 'statsmodels', 'scipy.stats') if m in sys.modules]; "
            "print(rc, heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert (built["root"] / "light" / "night-1" / "technical_report.md").exists()


@pytest.mark.parametrize("case", ["no_calls", "no_baseline", "one_config"])
def test_degenerate_sweeps_still_render_every_section(tmp_path, case):
    import duckdb

    path = tmp_path / "wh.duckdb"
    build_sweep(path, "d", seed=6, runs=2)
    con = duckdb.connect(str(path))
    if case == "no_calls":
        con.execute("UPDATE llm_calls SET status = 'error', error = 'boom'")
        con.execute("UPDATE runs SET status = 'error'")
    elif case == "no_baseline":
        for table in ("llm_calls", "runs", "configs"):
            con.execute(f"DELETE FROM {table} WHERE config_id = 'baseline_default'")
    else:
        for table in ("llm_calls", "runs", "configs"):
            con.execute(f"DELETE FROM {table} WHERE config_id NOT IN ('baseline_default', 'ctx512_temp0p6')")
    con.close()
    report = generate(path, "d", tmp_path / "out", "templates").path
    text = report.read_text()
    headings = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    assert [h for h in headings if h in SECTIONS] == SECTIONS
    if case == "no_calls":
        assert "No decode rate was measured." in text
    if case == "no_baseline":
        assert "the matrix has no baseline" in text.lower()


def test_report_without_plots_renders_without_plot_links(tmp_path):
    """``plots=False`` (no matplotlib at all) still renders every section, with no image links."""
    path = tmp_path / "wh.duckdb"
    build_sweep(path, "np")
    report = generate(path, "np", tmp_path / "out", "templates", plots=False).path
    text = report.read_text()
    assert "## 4." in text and "## 15." in text and ".png" not in text
