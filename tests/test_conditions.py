"""Measurement conditions from recorded rows: contended runs named, ignored options named."""

from __future__ import annotations

from datetime import UTC, datetime

from tr111.report.conditions import host_noise, ignored_options
from tr111.warehouse import connect, open_read_only, writer


def cfg(config_id, num_gpu, num_ctx, size_vram, context_length, baseline=False):
    return {"config_id": config_id, "is_baseline": baseline, "levels": {"num_gpu": num_gpu, "num_ctx": num_ctx},
            "size_vram": size_vram, "context_length": context_length}


def test_a_swept_option_the_server_never_applied_is_named():
    configs = [cfg("baseline_default", None, None, 0, 2048, baseline=True),
               cfg("gpu60_ctx256", 60, 256, 0, 256), cfg("gpu80_ctx256", 80, 256, 0, 256),
               cfg("gpu60_ctx512", 60, 512, 0, 512), cfg("gpu80_ctx512", 80, 512, 0, 512)]
    ignored = ignored_options(configs, ["num_gpu", "num_ctx"])
    assert [(i.option, i.levels, i.observed) for i in ignored] == [("num_gpu", (60, 80), 0)]
    configs[1]["size_vram"] = 10**9  # one level really offloaded: a treatment after all
    assert ignored_options(configs, ["num_gpu", "num_ctx"]) == ()
    configs[1]["size_vram"], configs[2]["size_vram"] = 0, None  # one config never described: no verdict
    assert ignored_options(configs, ["num_gpu"]) == ()


def call(config_id, run, stage, contended, other_s, wall_ms=1000.0, harness=0.01):
    return {"sweep_id": "s", "config_id": config_id, "run_number": run, "stage": stage, "attempt": 1,
            "run_attempt": 1, "status": "ok", "ttft_ms": 10.0, "wall_ms": wall_ms,
            "started_at": datetime.now(UTC), "host_contended": contended, "host_other_cpu_s": other_s,
            "host_harness_cpu_s": harness}


def run(config_id, n):
    return {"sweep_id": "s", "config_id": config_id, "run_number": n, "status": "ok", "run_attempt": 1,
            "started_at": datetime.now(UTC)}


def test_contended_runs_are_named_and_a_remote_host_is_said_to_be_invisible(tmp_path):
    path = tmp_path / "w.duckdb"
    with connect(path):
        pass
    writer.record_run(path, run("a", 1), [call("a", 1, "analysis", False, 0.01), call("a", 1, "report", None, 0.0)])
    writer.record_run(path, run("a", 2), [call("a", 2, "analysis", True, 0.9), call("a", 2, "report", False, 0.1)])
    writer.record_run(path, run("b", 1), [call("b", 1, "analysis", True, 0.5, wall_ms=500.0),
                                          call("b", 1, "report", False, 0.0)])
    with open_read_only(path) as con:
        noise = host_noise(con, "s")
    assert noise.runs == ("a-run2", "b-run1") and noise.contended_calls == 2 and noise.unjudged_calls == 1
    assert noise.calls == 6 and noise.visible and abs(noise.max_other_cpu_share - 1.0) < 1e-9
    path2 = tmp_path / "remote.duckdb"
    writer.record_run(path2, run("a", 1), [call("a", 1, "analysis", None, None), call("a", 1, "report", None, None)])
    with open_read_only(path2) as con:
        remote = host_noise(con, "s")
    assert not remote.visible and not remote.affected


def test_the_report_names_contended_runs_warns_before_tests_and_drops_an_ignored_option(tmp_path):
    from fixtures_report import build_sweep

    from tr111.paths import templates_dir
    from tr111.report.service import generate
    from tr111.warehouse import connect

    path = tmp_path / "w.duckdb"
    build_sweep(path, "n", seed=3, runs=3)
    with connect(path) as con:  # one run met a CPU burner; the server kept num_ctx at 2048 throughout
        con.execute("UPDATE llm_calls SET host_contended = (config_id = 'ctx512_temp0p6' AND run_number = 2),"
                    " host_other_cpu_s = 0.01, host_harness_cpu_s = 0.01")
        con.execute("UPDATE sweeps SET run_order = 'shuffled, runs of a config together', order_seed = 42,"
                    " restarts_planned = 5")
        con.execute("UPDATE configs SET context_length = 2048")
    outcome = generate(path, "n", tmp_path / "out", templates_dir(), plots=False)
    text = outcome.path.read_text(encoding="utf-8")
    conditions = text[text.index("### 2.5 Measurement conditions"):text.index("## 3. Configuration matrix")]
    assert "shuffled, runs of a config together (seed 42" in conditions and "5 restart(s) planned" in conditions
    assert "ctx512_temp0p6-run2" in conditions and "ran while other processes used the CPUs" in conditions
    assert "Ignored option: `num_ctx`" in conditions and "not analysed as a treatment" in conditions
    for section in ("## 6.", "## 8.", "## 10.", "## 11."):
        body = text[text.index(section):]
        assert body.split("\n## ", 1)[0].count("**Host contention:**") == 1
    assert outcome.context.effects["factors"] == ["temperature"]  # num_ctx left out of the ANOVA
    assert outcome.context.effects["ignored"] == ["num_ctx"]
