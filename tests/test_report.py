"""The technical report on a fixture warehouse with planted effects: sections, numbers, verdicts.

Every number checked here is recomputed from the raw rows with pandas, scipy,
statsmodels (tr111.effects) and tr111.regression / tr111.quality, then
compared with the rendered markdown.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats as sps

from fixtures_report import CONFIGS, POOR_CONFIG, SLOW_FACTOR, START, build_sweep
from oracles.effects import anova, observations, welch_compare
from tr111.report.service import generate
from tr111.stats.summary import population_summary
from tr111.warehouse import open_read_only

SLOW = "ctx512_temp0p6"
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
    build_sweep(path, "night-1", seed=1, started_at=START, scale={SLOW: 1 / SLOW_FACTOR})
    build_sweep(path, "night-2", seed=10, started_at=START + timedelta(days=1), failed_attempt=True)
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
    return {r[0].strip("`"): r for r in rows}


def run_means(calls, metric, warm_only=False):
    frame = calls[~calls["is_cold"].astype(bool)] if warm_only else calls
    return frame.groupby(["config_id", "run_number"])[metric].mean()


# --------------------------------------------------------------------------- structure


def test_every_section_in_the_studys_order(built):
    headings = [line[3:].strip() for line in built["text"].splitlines() if line.startswith("## ")]
    assert [h for h in headings if h in SECTIONS] == SECTIONS
    for needle in ("### Key findings", "### 2.1 Hardware and software", "### 4.2 Performance ranking",
                   "### 5.1 Throughput distribution", "### 5.2 TTFT distribution", "Interaction effects",
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
    assert set(links) >= {"throughput.png", "ttft_cold_warm.png", "sensitivity_num_ctx.png",
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


def test_aggregate_table_matches_raw_rows(built):
    rows = by_config(table(built["text"], "| Configuration | Calls | Runs | Avg throughput"))
    assert list(rows) == CONFIGS
    for config_id, group in built["calls"].groupby("config_id"):
        r = rows[config_id]
        tps = group["throughput_tps"].to_numpy()
        warm = group.loc[~group["is_cold"].astype(bool), "ttft_ms"].to_numpy()
        assert int(r[1]) == len(group) and int(r[2]) == group["run_number"].nunique()
        assert close(number(r[3]), tps.mean())
        ci = sps.t.interval(0.95, len(tps) - 1, loc=tps.mean(), scale=sps.sem(tps))
        assert all(close(a, b) for a, b in zip(interval(r[4]), ci))
        assert close(number(r[5]), tps.std(ddof=1)) and close(number(r[6]), tps.std(ddof=1) / tps.mean() * 100)
        assert int(r[7]) == len(warm) == len(group) - 1  # one cold call per config
        assert close(number(r[8]), warm.mean())
        ci = sps.t.interval(0.95, len(warm) - 1, loc=warm.mean(), scale=sps.sem(warm))
        assert all(close(a, b) for a, b in zip(interval(r[9]), ci))
        assert close(number(r[10]), warm.std(ddof=1)) and close(number(r[11]), warm.std(ddof=1) / warm.mean() * 100)
        assert int(r[12]) == group["eval_count"].sum()


def test_cold_and_warm_ttft_with_percentiles_match(built):
    rows = by_config(table(built["text"], "| Configuration | Warm n | Warm mean"))
    for config_id, group in built["calls"].groupby("config_id"):
        r = rows[config_id]
        cold_mask = group["is_cold"].astype(bool)
        warm, cold = group.loc[~cold_mask, "ttft_ms"], group.loc[cold_mask, "ttft_ms"]
        assert int(r[1]) == len(warm) and int(r[6]) == len(cold) == 1
        assert close(number(r[2]), warm.mean()) and close(number(r[4]), np.percentile(warm, 50))
        assert close(number(r[5]), np.percentile(warm, 95))
        assert close(number(r[7]), cold.mean()) and r[8] == "n/a"  # one cold call: no CI
        assert close(number(r[11]), group.loc[cold_mask, "load_duration_ms"].mean())
        assert number(r[7]) > 5 * number(r[2])  # the planted load is visible, not averaged away


def test_population_statistics_match(built):
    calls = built["calls"]
    for heading, frame in (("### 5.1", calls), ("### 5.2", calls[~calls["is_cold"].astype(bool)])):
        metric = "throughput_tps" if heading == "### 5.1" else "ttft_ms"
        pop = population_summary(frame.groupby("config_id")[metric].mean().to_dict())
        block = built["text"].split(heading, 1)[1].split("###", 1)[0]
        values = dict(re.findall(r"- \*\*(\w+):\*\* ([\d,.]+)", block))
        assert close(number(values["Mean"]), pop.mean) and close(number(values["Median"]), pop.median)
        assert close(number(values["StdDev"]), pop.stddev) and close(number(values["Range"]), pop.range)
        assert close(number(values["CV"]), pop.cv_pct)


def test_anova_finds_the_planted_effect_and_not_the_null(built):
    calls = built["calls"]
    text = built["text"]
    for title, metric, cold in (("**ANOVA of throughput**", "throughput_tps", False),
                                ("**ANOVA of warm TTFT**", "ttft_ms", True)):
        ref = anova(calls, metric, ("num_ctx", "temperature"), exclude_cold=cold)
        block = text.split(title, 1)[1]
        rows = {r[0]: r for r in table(block, "| Term |")}
        assert ref.row("num_ctx").significant and not ref.row("temperature").significant
        assert rows["num_ctx"][6] == "significant"
        assert rows["temperature"][6] == "not significant"
        assert rows["num_ctx × temperature"][6] == "not significant"
        for term, label in (("num_ctx", "num_ctx"), ("temperature", "temperature"),
                            ("num_ctx:temperature", "num_ctx × temperature")):
            expected, r = ref.row(term), rows[label]
            assert int(r[1]) == expected.df and close(number(r[2]), expected.sum_sq, 4)
            assert close(number(r[3]), expected.f_value) and close(number(r[5]), expected.partial_eta_sq, 3)
            assert close(number(r[4]), expected.p_value, 4) if expected.p_value >= 1e-4 else r[4] == "< 0.0001"
        assert close(number(rows["Residual"][2]), ref.ss_resid, 4)
    assert "Main effect F(1, 12)" in text


def test_sensitivity_levels_match_run_means(built):
    calls = built["calls"]
    text = built["text"].split("### 6.1", 1)[1]
    rows = {r[0]: r for r in table(text, "| num_ctx | Configs | Runs")}
    tps = observations(calls, "throughput_tps", ("num_ctx", "temperature"))
    warm = observations(calls, "ttft_ms", ("num_ctx", "temperature"), exclude_cold=True)
    for level, r in rows.items():
        t = tps.loc[tps["num_ctx"] == float(level), "throughput_tps"]
        w = warm.loc[warm["num_ctx"] == float(level), "ttft_ms"]
        assert int(r[1]) == 2 and int(r[2]) == len(t) == 8
        assert close(number(r[3]), t.mean()) and close(number(r[6]), w.mean())
        ci = sps.t.interval(0.95, len(t) - 1, loc=t.mean(), scale=sps.sem(t))
        assert all(close(a, b) for a, b in zip(interval(r[4]), ci))
    low, high = number(rows["1024"][3]), number(rows["512"][3])
    assert (high - low) / high == pytest.approx(0.08, abs=0.01)  # the planted -8%


def test_chimera_comparison_is_welch_on_run_means(built):
    calls = built["calls"]
    text = built["text"].split("## 8.", 1)[1].split("## 9.", 1)[0]
    best = built["ctx"].chimera["comparisons"][0]["best"]["config_id"]
    assert f"### 8.1 Best by throughput: `{best}`" in text
    tps = run_means(calls, "throughput_tps")
    rows = table(text, "| Metric | Baseline")
    ref = welch_compare(tps[best].tolist(), tps["baseline_default"].tolist())
    r = rows[0]
    assert close(number(r[3]), ref.diff) and close(number(r[4]), ref.diff_pct)
    assert close(number(r[6]), ref.t) and close(number(r[8]), ref.p_value, 4) and close(number(r[9]), ref.hedges_g)
    assert r[10] == ("significant" if ref.p_value < 0.05 else "not significant")


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


def test_regression_section_flags_the_slowed_config_and_no_other(built):
    from oracles.regression import detect_regressions

    text = built["text"].split("## 11.", 1)[1].split("### 11.1", 1)[0]
    rows = by_config(table(text, "| Configuration | Throughput before"))
    ref = {(c.config_id, c.metric): c for c in detect_regressions(built["previous"], built["calls"])}
    for config_id, r in rows.items():
        assert close(number(r[2]), ref[(config_id, "throughput_tps")].change_pct)
        assert close(number(r[5]), ref[(config_id, "ttft_ms")].change_pct)
        assert ("REGRESSION" in r[7]) == (config_id == SLOW)
    assert f"**Flagged regressions (1):** `{SLOW}`." in text
    summary = json.loads((built["report"].parent / "summary.json").read_text())
    assert summary["regressions"]["flagged"] == [SLOW] and summary["regressions"]["previous"] == "night-1"


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


def test_recommendations_come_from_the_data(built):
    ctx = built["ctx"]
    tiers = {t.key: t for t in ctx.recommendations}
    calls = built["calls"]
    best = calls.groupby("config_id")["throughput_tps"].mean().idxmax()
    assert tiers["best_throughput"].config_id == best
    assert f"### 10.1 Best throughput: `{best}`" in built["text"]


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
        assert "No throughput was measured." in text
    if case == "no_baseline":
        assert "the matrix has no baseline" in text.lower()


def test_report_without_plots_renders_without_plot_links(tmp_path):
    """``plots=False`` (no matplotlib at all) still renders every section, with no image links."""
    path = tmp_path / "wh.duckdb"
    build_sweep(path, "np")
    report = generate(path, "np", tmp_path / "out", "templates", plots=False).path
    text = report.read_text()
    assert "## 4." in text and "## 15." in text and ".png" not in text
