"""Host as a factor in a replicate fleet's report (tr111.report.fleet), against statsmodels."""

from __future__ import annotations

import math
import random

import pytest

from tr111.report.fleet import host_effects, run_values
from tr111.warehouse import connect, writer


def _fleet(wh, mode: str = "replicate", host_gain: float = 1.2, seed: int = 3) -> None:
    rng = random.Random(seed)
    hosts = ("gpu-a", "gpu-b")
    for host in hosts:
        sweep_id = f"f1-{host}" if mode == "replicate" else "f1"
        writer.start_sweep(wh, {"sweep_id": sweep_id, "status": "completed", "fleet_id": "f1",
                                "fleet_mode": mode, "host": host}, [])
    for h, host in enumerate(hosts):
        for c, config in enumerate(("c1", "c2", "c3")):
            if mode == "split" and (c % 2) != h:
                continue
            sweep_id = f"f1-{host}" if mode == "replicate" else "f1"
            for run in range(1, 5):
                calls = []
                for stage in ("analysis", "report"):
                    tps = 50 * (host_gain if host == "gpu-b" else 1.0) * (1 + 0.1 * c) * math.exp(rng.gauss(0, 0.05))
                    calls.append({"sweep_id": sweep_id, "config_id": config, "run_number": run,
                                  "stage": stage, "attempt": 1, "run_attempt": 1, "status": "ok",
                                  "throughput_tps": tps, "ttft_ms": 100 * math.exp(rng.gauss(0, 0.1)),
                                  "is_cold": run == 1 and stage == "analysis", "host": host})
                writer.record_run(wh, {"sweep_id": sweep_id, "config_id": config, "run_number": run,
                                       "status": "ok", "run_attempt": 1, "host": host}, calls)


def test_host_effect_matches_statsmodels_two_way_anova(tmp_path):
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    from statsmodels.stats.anova import anova_lm

    wh = tmp_path / "wh.duckdb"
    _fleet(wh)
    with connect(wh) as con:
        effects = host_effects(con, {"sweep_id": "f1-gpu-a", "fleet_id": "f1", "fleet_mode": "replicate"})
        assert [(e["stage"], e["measure"]) for e in effects] == [
            ("analysis", "decode rate"), ("analysis", "warm TTFT"), ("report", "decode rate"),
            ("report", "warm TTFT")]
        for e in effects:
            column, which = (("throughput_tps", "") if e["measure"] == "decode rate"
                             else ("ttft_ms", "AND NOT coalesce(c.is_cold, false)"))
            data = pd.DataFrame(run_values(con, "f1", e["stage"], column, which), columns=["host", "config", "v"])
            oracle = anova_lm(smf.ols("v ~ C(host) * C(config)", data=data).fit(), typ=2)
            for term, name in ((e["host"], "C(host)"), (e["config"], "C(config)"),
                               (e["interaction"], "C(host):C(config)")):
                assert term.f_value == pytest.approx(oracle.loc[name, "F"], rel=1e-6)
                assert term.p_value == pytest.approx(oracle.loc[name, "PR(>F)"], rel=1e-6, abs=1e-12)
    decode = effects[0]
    assert decode["host"].significant and decode["runs"] == 24  # the planted 20 % host gain


def test_a_split_fleet_tests_no_host_effect_and_the_report_says_why(tmp_path):
    wh = tmp_path / "wh.duckdb"
    _fleet(wh, mode="split")
    with connect(wh) as con:
        assert host_effects(con, {"sweep_id": "f1", "fleet_id": "f1", "fleet_mode": "split"}) == []
        assert host_effects(con, {"sweep_id": "x"}) == []  # not a fleet sweep
