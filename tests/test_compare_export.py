"""``tr111 compare`` (exit status = the regression verdict, per config and stage) and ``tr111 export``."""

from __future__ import annotations

import csv
import json
from datetime import timedelta

import duckdb
import numpy as np
import pytest

from fixtures_report import CONFIGS, START, build_sweep
from tr111.cli import main
from tr111.report.scoring import ensure_quality_scores

SLOW = "ctx1024_temp0p6"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare") / "wh.duckdb"
    build_sweep(path, "n1", seed=21, started_at=START, stages=True)
    build_sweep(path, "n2", seed=22, started_at=START + timedelta(days=1), stages=True)  # noise only vs n1
    build_sweep(path, "n3", seed=23, started_at=START + timedelta(days=2), slow=SLOW, stages=True)  # 10% slower
    ensure_quality_scores(path, "n2")  # what `tr111 report` stores
    return path


def test_a_planted_slowdown_is_flagged_and_exits_3(warehouse, capsys):
    assert main(["compare", "--baseline", "n2", "--candidate", "n3", "--warehouse", str(warehouse)]) == 3
    out = capsys.readouterr().out
    flagged = [(line.split()[0], line.split()[1:4]) for line in out.splitlines() if line.endswith("REGRESSION")]
    # the decode rate of both stages; TTFT did not change
    assert flagged == [(SLOW, ["decode", "rate", "(analysis),"]), (SLOW, ["decode", "rate", "(report),"])]
    assert out.strip().endswith(f"regressions: 1 ({SLOW})")


def test_noise_alone_is_not_flagged_and_exits_0(warehouse, capsys):
    assert main(["compare", "--baseline", "n1", "--candidate", "n2", "--warehouse", str(warehouse),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["flagged"] == [] and len(result["rows"]) == len(CONFIGS)
    assert all(abs(r[name][stage]["change_pct"]) < 5 for r in result["rows"]
               for name in ("decode_tps", "warm_ttft_ms") for stage in ("analysis", "report"))


def test_previous_means_the_last_completed_sweep_of_the_same_matrix(warehouse, capsys):
    assert main(["compare", "--baseline", "previous", "--warehouse", str(warehouse), "--json"]) == 3
    result = json.loads(capsys.readouterr().out)
    assert (result["baseline"], result["candidate"]) == ("n2", "n3") and result["flagged"] == [SLOW]
    slow = next(r for r in result["rows"] if r["config_id"] == SLOW)["decode_tps"]
    for stage in ("analysis", "report"):
        assert slow[stage]["change_pct"] == pytest.approx(-10, abs=2.5) and slow[stage]["p_value"] < 0.05
    # a higher threshold than the slowdown flags nothing
    assert main(["compare", "--baseline", "n2", "--candidate", "n3", "--threshold", "25",
                 "--warehouse", str(warehouse)]) == 0


def test_unknown_sweep_is_a_usage_error(warehouse, capsys):
    assert main(["compare", "--baseline", "nope", "--candidate", "n3", "--warehouse", str(warehouse)]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_writes_calls_runs_scores_and_summary(warehouse, tmp_path, fmt):
    out = tmp_path / "export"
    assert main(["export", "--sweep", "n2", "--format", fmt, "--out", str(out),
                 "--warehouse", str(warehouse)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {f"{n}.{fmt}" for n in ("llm_calls", "runs", "quality_scores", "config_summary",
                                            "stage_summary")} | {"summary.json"}
    con = duckdb.connect()
    reader = {"csv": "read_csv_auto", "json": "read_json_auto", "parquet": "read_parquet"}[fmt]

    def load(name):
        return con.execute(f"SELECT * FROM {reader}('{out / (name + '.' + fmt)}')").df()

    calls, summary, stages = load("llm_calls"), load("config_summary"), load("stage_summary")
    assert len(calls) == len(CONFIGS) * 4 * 2 and set(calls["sweep_id"]) == {"n2"}
    assert len(load("runs")) == len(CONFIGS) * 4 and len(load("quality_scores")) == len(CONFIGS) * 4
    assert list(summary["config_id"]) == CONFIGS and len(stages) == 2 * len(CONFIGS)
    for config_id, group in calls.groupby("config_id"):
        row = summary[summary["config_id"] == config_id].iloc[0]
        assert row["tr111_tps_all_calls_mean"] == pytest.approx(group["throughput_tps"].mean())
        assert row["tr111_ttft_all_calls_mean"] == pytest.approx(group["ttft_ms"].mean())
        assert row["calls"] == len(group)
        for stage, part in group.groupby("stage"):
            srow = stages[(stages["config_id"] == config_id) & (stages["stage"] == stage)].iloc[0]
            warm = part.loc[~part["is_cold"].astype(bool), "ttft_ms"]
            assert srow["warm_ttft_mean"] == pytest.approx(warm.mean())
            assert srow["warm_ttft_geo_mean"] == pytest.approx(np.exp(np.log(warm).mean()))
            assert srow["warm_ttft_p95"] == pytest.approx(warm.quantile(0.95))
            assert srow["decode_tps_geo_mean"] == pytest.approx(np.exp(np.log(part["throughput_tps"]).mean()))
            assert srow["calls"] == len(part)
    if fmt == "csv":  # a plain CSV reader sees a header and one line per call
        with open(out / "llm_calls.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) == len(calls)
