"""One SweepSummary, many outputs: summary.json, the artifacts, `tr111 compare` and `tr111 export`
print the same numbers because they all read the summary the report was rendered from."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from fixtures_report import CONFIGS, SLOW_FACTOR, START, build_sweep
from tr111.cli import main
from tr111.report import formatting
from tr111.report.service import generate
from tr111.tasks import artifacts

SLOW = CONFIGS[2]


def same(a, b) -> bool:
    """Equal JSON, floats to 1e-9 (DuckDB may sum in another order on another connection)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return a == b and type(a) is type(b)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("summary")
    path = root / "wh.duckdb"
    build_sweep(path, "s1", seed=41, started_at=START, scale={SLOW: 1 / SLOW_FACTOR}, stages=True)
    build_sweep(path, "s2", seed=42, started_at=START + timedelta(days=1), stages=True)
    outcome = generate(path, "s2", root / "out", "templates", threshold_pct=5.0, plots=False)
    return {"path": path, "root": root, "outcome": outcome, "summary": outcome.summary}


def test_summary_json_is_the_summary_object(rendered):
    summary = rendered["summary"]
    written = json.loads((rendered["outcome"].path.parent / "summary.json").read_text())
    assert written == json.loads(summary.to_json())
    assert [a["config_id"] for a in written["aggregate"]] == CONFIGS
    assert written["regressions"]["previous"] == "s1" and written["regressions"]["flagged"] == [SLOW]
    assert summary.regressions is rendered["outcome"].context.regressions  # the report's own check


def test_artifacts_and_report_print_one_regression_table(rendered):
    summary = rendered["summary"]
    table = formatting.regression_table(summary.regressions)
    assert table in rendered["outcome"].path.read_text()  # the report's section 11
    markdown = artifacts.regressions_markdown(summary)
    assert table in markdown and f"**1 config(s) regressed:** `{SLOW}`" in markdown
    slow = next(r for r in summary.regressions.rows if r.config_id == SLOW).change("decode_report")
    assert f"| {formatting.signed(slow.change_pct)} | {formatting.pvalue(slow.p_value)} |" in markdown
    rows = artifacts.aggregate_table(summary)
    assert [(r["config"], r["stage"]) for r in rows] == [(c, s) for c in CONFIGS for s in ("analysis", "report")]
    for row, (agg, stage) in zip(rows, [(a, s) for a in summary.aggregate for s in a.stages]):
        assert row["decode_tok_s"] == round(stage.decode_tps.geo_mean, 2)
        assert row["prefill_tok_s"] == round(stage.prefill_tps.geo_mean, 2)
        assert row["warm_ttft_ci95"] == formatting.ci(stage.warm_ttft_ms)
        assert row["tr111_throughput_all_calls"] == round(agg.study_throughput_tps.mean, 2)
        assert row["quality"] == (None if agg.quality_overall is None else round(agg.quality_overall, 3))
    report = rendered["outcome"].path.read_text()
    analysis = summary.aggregate[0].stage("analysis")
    assert f"| {formatting.geo(analysis.warm_ttft_ms)} |" in report  # the report's section 4.2 cell


def test_compare_json_and_text_are_the_report_comparison(rendered, capsys):
    summary, wh = rendered["summary"], str(rendered["path"])
    assert main(["compare", "--baseline", "previous", "--candidate", "s2", "--threshold", "5",
                 "--warehouse", wh, "--json"]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert same(printed, json.loads(json.dumps(summary.regressions.to_dict())))
    written = json.loads((rendered["outcome"].path.parent / "summary.json").read_text())
    assert same(printed, {k: v for k, v in written["regressions"].items() if k != "previous"})
    assert main(["compare", "--baseline", "s1", "--candidate", "s2", "--threshold", "5", "--warehouse", wh]) == 3
    text = capsys.readouterr().out.splitlines()[3:3 + 4 * len(summary.regressions.rows)]
    lines = {tuple(re.split(r"\s{2,}", line)[:2]): line for line in text}
    assert sorted({c for c, _ in lines}) == [r.config_id for r in summary.regressions.rows] == sorted(CONFIGS)
    for row in summary.regressions.rows:
        for change in row.changes:
            line = lines[(row.config_id, f"{change.measure.name}, {change.measure.unit}")]
            assert formatting.signed_pct(change.change_pct) in line and formatting.pvalue(change.p_value) in line
            assert line.endswith("REGRESSION") == change.regression
    assert lines[(SLOW, "decode rate (report), tok/s")].endswith("REGRESSION")


def test_export_writes_the_same_summary(rendered, tmp_path, monkeypatch):
    monkeypatch.setenv("TR111_REGRESSION_THRESHOLD_PCT", "5")
    out = tmp_path / "export"
    assert main(["export", "--sweep", "s2", "--format", "json", "--out", str(out),
                 "--warehouse", str(rendered["path"])]) == 0
    exported = json.loads((out / "summary.json").read_text())
    expected = json.loads(rendered["summary"].to_json())
    assert exported.pop("plots") == {} and expected.pop("plots")
    assert same(exported, expected)
    config_rows = json.loads((out / "config_summary.json").read_text())
    for row, agg in zip(config_rows, rendered["summary"].aggregate):
        assert row["config_id"] == agg.config_id
        assert row["tr111_tps_all_calls_mean"] == pytest.approx(agg.study_throughput_tps.mean)
        assert row["quality_overall"] == pytest.approx(agg.quality_overall)
    stage_rows = json.loads((out / "stage_summary.json").read_text())
    stages = [(a, st) for a in rendered["summary"].aggregate for st in a.stages]
    assert len(stage_rows) == len(stages)
    for row, (agg, st) in zip(stage_rows, stages):
        assert (row["config_id"], row["stage"]) == (agg.config_id, st.stage)
        assert row["warm_ttft_geo_mean"] == pytest.approx(st.warm_ttft_ms.geo_mean)
        assert row["warm_ttft_ci95_low"] == pytest.approx(st.warm_ttft_ms.ci95_low)
        assert row["prefill_tps_geo_mean"] == pytest.approx(st.prefill_tps.geo_mean)
        assert row["warm_client_overhead_ms"] == pytest.approx(st.overhead_ms)
