"""The run's pure decisions, without Prefect or a server: resume bookkeeping, restarts,
truncation, cold/warm, the rows a run produces and the sweep's final status."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tr111.matrix import parse_matrix
from tr111.ollama.metrics import CallResult, ServerMetrics
from tr111.paths import templates_dir
from tr111.run import plan as planning, stages
from tr111.run.restart import RestartOutcome

MATRIX = {"model": "m", "runs": 3, "baseline": True, "grid": {"num_ctx": [256, 512]}, "restart": "per_config",
          "order": "grid"}


def request(**over):
    return planning.request_for(parse_matrix({**MATRIX, **over}), "s1")


def plan(**over) -> planning.SweepPlan:
    values = dict(sweep_id="s1", model="m", ollama_url="http://127.0.0.1:1", warehouse_path=Path("w.duckdb"),
                  templates_dir=templates_dir(), corpus_dir=Path("c"), restart_strategy="unload",
                  restart_policy="per_config")
    return planning.SweepPlan(**{**values, **over})


def call(ttft=50.0, load=1.0, prompt_eval=100, prompt="p" * 400, status="ok") -> CallResult:
    return CallResult(model="m", prompt=prompt, options={}, started_at=datetime.now(UTC), response="r",
                      ttft_ms=ttft, wall_ms=ttft + 100, chunks=10, status=status,
                      server=ServerMetrics(load_duration_ms=load, prompt_eval_count=prompt_eval,
                                           prompt_eval_duration_ms=20, eval_count=10,
                                           eval_duration_ms=100, total_duration_ms=150))


def test_run_keys_in_matrix_order_with_next_attempt_numbers():
    req = request()
    keys = planning.run_keys(req, set(), {}, {})
    assert [k.name for k in keys][:4] == ["baseline_default-run1", "baseline_default-run2",
                                          "baseline_default-run3", "ctx256-run1"]
    assert len(keys) == 3 * 3 and all(k.run_attempt == 1 for k in keys)
    assert all(k.first_call_attempts == {"warmup": 1, "analysis": 1, "report": 1} for k in keys)


def test_resume_skips_finished_runs_and_continues_attempt_numbers():
    req = request()
    done = {("baseline_default", 1), ("ctx256", 2)}
    keys = planning.run_keys(req, done, {("ctx256", 1, "analysis"): 3}, {("ctx256", 1): 2})
    names = [k.name for k in keys]
    assert "baseline_default-run1" not in names and "ctx256-run2" not in names and len(keys) == 7
    again = next(k for k in keys if k.name == "ctx256-run1")
    assert again.run_attempt == 3 and again.first_call_attempts["analysis"] == 4
    assert again.first_call_attempts["report"] == 1


def test_bad_config_ids_are_refused_before_anything_runs():
    from tr111.errors import ConfigError

    with pytest.raises(ConfigError, match="sweep id"):
        planning.request_for(parse_matrix(MATRIX), "../etc")


@pytest.mark.parametrize("policy,expected", [("per_config", [True, False, False]),
                                             ("per_run", [True, True, True]),
                                             ("never", [False, False, False])])
def test_restart_policy(policy, expected):
    p = plan(restart_policy=policy)
    keys = planning.run_keys(request(), set(), {}, {})[:3]  # one config's three runs
    assert [planning.should_restart(p, k) for k in keys] == expected


def test_shuffled_order_is_a_seeded_permutation_that_keeps_a_configs_runs_together():
    req = request(order="shuffled")
    first = [k.name for k in planning.run_keys(req, set(), {}, {}, seed=7)]
    assert first == [k.name for k in planning.run_keys(req, set(), {}, {}, seed=7)]  # reproducible
    assert sorted(first) == sorted(k.name for k in planning.run_keys(request(), set(), {}, {}))
    orders = {tuple(k.config.config_id for k in planning.run_keys(req, set(), {}, {}, seed=s)[::3])
              for s in range(20)}
    assert len(orders) > 1  # the seed really permutes the configs
    keys = planning.run_keys(req, set(), {}, {}, seed=7)
    assert [k.follows_other_config for k in keys] == [True, False, False] * 3
    assert planning.restarts_planned(plan(), keys) == 3


def test_interleaved_replicates_restart_before_every_run_and_change_the_round_order():
    req = request(interleave=True, order="shuffled")
    keys = planning.run_keys(req, set(), {}, {}, seed=3)
    assert [k.run_number for k in keys] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(k.follows_other_config for k in keys)
    assert planning.restarts_planned(plan(), keys) == 9  # per_config now costs one per run
    assert planning.run_order(req.matrix) == "shuffled, interleaved replicates"


def test_execution_keys_at_their_defaults_leave_the_recorded_matrix_json_unchanged():
    import json

    plain = parse_matrix({k: v for k, v in MATRIX.items() if k != "order"})
    assert "order" not in json.loads(plain.to_json()) and "seed" not in json.loads(plain.to_json())
    assert json.loads(parse_matrix({**MATRIX, "interleave": True}).to_json())["interleave"] is True


def test_restart_strategy_defaults_to_a_real_restart_of_the_embedded_engine():
    assert planning.restart_strategy_for(None, "embedded") == "embedded"
    assert planning.restart_strategy_for(None, "ollama") == "unload"
    assert planning.restart_strategy_for("none", "embedded") == "none"


def test_truncation_is_flagged_when_the_prompt_filled_the_context():
    assert stages.truncation(call(prompt_eval=256), 256, True)[0] is True
    flagged, reason = stages.truncation(call(prompt_eval=100, prompt="x" * 4000), 512, True)
    assert flagged and "only 100 evaluated" in reason
    assert stages.truncation(call(prompt_eval=900, prompt="x" * 4000), 2048, True) == (False, None)
    assert stages.truncation(call(prompt_eval=100), None, True) == (False, None)


def test_first_call_after_a_restart_is_cold_the_rest_warm():
    decisions = stages.classify_run_calls([call(), call()], first_after_restart=True, options_changed=False)
    assert [d[0] for d in decisions] == [True, False]
    # a reload seen in load_duration (threshold: 5x the median load of the warm-expected calls)
    decisions = stages.classify_run_calls([call(load=1500.0), call(), call()], first_after_restart=False,
                                          options_changed=False)
    assert [d[0] for d in decisions] == [True, False, False]


def test_finish_run_builds_the_run_row_and_one_row_per_call():
    req = request()
    key = planning.run_keys(req, set(), {}, {})[3]  # ctx256-run1
    t0 = time.perf_counter_ns()
    calls = {"analysis": call(prompt_eval=256), "report": call()}
    run, rows = stages.finish_run(plan(), key, started_at=datetime.now(UTC), t0_ns=t0,
                                  restart=RestartOutcome("unload", True, 12.5), ingest_ms=3.0,
                                  ingest_cached=False, fingerprint="f", calls=calls,
                                  attempts={"analysis": 1, "report": 2}, error=None)
    assert run["status"] == "ok" and run["cold"] is True and run["restart_ms"] == 12.5
    assert run["analysis_ms"] == calls["analysis"].wall_ms and run["total_ms"] >= 0
    assert [(r["stage"], r["attempt"], r["is_cold"], r["truncated"]) for r in rows] == [
        ("analysis", 1, True, True), ("report", 2, False, False)]
    assert all(r["num_ctx"] == 256 and r["sweep_id"] == "s1" for r in rows)


def test_a_failed_run_is_an_error_row_with_its_reason():
    key = planning.run_keys(request(), set(), {}, {})[0]
    run, rows = stages.finish_run(plan(), key, started_at=datetime.now(UTC), t0_ns=time.perf_counter_ns(),
                                  restart=None, ingest_ms=None, ingest_cached=None, fingerprint=None,
                                  calls={}, attempts={}, error="TransientError: gone")
    assert run["status"] == "error" and run["error"] == "TransientError: gone" and rows == []


def test_prompts_carry_a_run_unique_line_only_with_cache_bust():
    key = planning.run_keys(request(), set(), {}, {})[1]
    busted = stages.build_prompt(plan(), key, "analysis", "DATA")
    assert "s1/baseline_default/run2" in busted and "DATA" in busted
    assert "s1/" not in stages.build_prompt(plan(cache_bust=False), key, "analysis", "DATA")
    assert stages.build_prompt(plan(), key, "warmup", stages.WARMUP_PROMPT) == stages.WARMUP_PROMPT


def test_rows_and_status():
    config = request().configs[1]
    assert planning.config_row("s1", config, 1) == {
        "sweep_id": "s1", "config_id": "ctx256", "num_gpu": None, "num_ctx": 256, "temperature": None,
        "options_json": '{"num_ctx": 256}', "is_baseline": False, "position": 1}
    assert planning.final_status([]) == ("completed", None)
    assert planning.final_status(["a-run1"]) == ("completed_with_errors", "failed runs: a-run1")
    assert planning.show_digest({"details": 1, "modelfile": "x" * 10_000}) == {"details": 1}


def test_the_sweep_core_runs_a_whole_run_without_prefect(fake_ollama, tmp_path, small_corpus, monkeypatch):
    """tr111.run composes a run by hand (as the flows do) against the fake server: the context
    owns and closes the clients, the warehouse gets the sweep, run and call rows."""
    from tr111 import progress
    from tr111.errors import SweepIncompleteError
    from tr111.ingest.corpus import ingest_corpus
    from tr111.run import sweep
    from tr111.run.context import open_sweep
    from tr111.settings import Settings
    from tr111.warehouse import open_read_only, writer

    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")
    matrix = tmp_path / "m.yaml"
    matrix.write_text("model: gemma3:latest\nruns: 1\nbaseline: true\ngrid: {num_ctx: [256]}\n"
                      "options: {num_predict: 4}\norder: grid\n", encoding="utf-8")
    settings = Settings.build(ollama_url=fake_ollama.url, corpus_dir=small_corpus,
                              warehouse_path=tmp_path / "w.duckdb", out_dir=tmp_path / "out")
    request = sweep.prepare(settings, str(matrix), model=None, runs=None, sweep_id="core-1")
    events: list[str] = []
    unsubscribe = progress.subscribe(lambda event, data: events.append(event))
    try:
        with open_sweep(settings, request, url_explicit=True) as ctx:
            start = sweep.begin(ctx, request)
            assert (start.total, start.done, [k.name for k in start.todo]) == (
                2, 0, ["baseline_default-run1", "ctx256-run1"])
            failed: list[str] = []
            for index, key in enumerate(start.todo):
                t0 = time.perf_counter_ns()
                restart = stages.restart_stage(ctx, key)
                source = ingest_corpus(settings.corpus_dir, workers=1).to_prompt_text()
                calls = {}
                for stage in stages.STAGES:
                    prompt = stages.build_prompt(ctx.plan, key, stage, source)
                    calls[stage] = stages.call_stage(ctx, key, stage, prompt, 1, lambda row: None)
                    source = calls[stage].response
                run, rows = stages.finish_run(ctx.plan, key, started_at=datetime.now(UTC), t0_ns=t0,
                                              restart=restart, ingest_ms=1.0, ingest_cached=False,
                                              fingerprint="f", calls=calls,
                                              attempts={"analysis": 1, "report": 1}, error=None)
                writer.record_run(ctx.plan.warehouse_path, run, rows)
                sweep.after_run(ctx, key, run, start.todo[index:], failed)
            assert ctx.described == {"baseline_default", "ctx256"}
            fake_ollama.go_down()
            with pytest.raises(SweepIncompleteError, match="unfinished runs \\(1\\): ctx256-run1"):
                ctx.plan = ctx.plan.__class__(**{**ctx.plan.__dict__, "restart_timeout_s": 0.3})
                sweep.after_run(ctx, start.todo[1], {**run, "status": "error"}, start.todo[1:], failed)
            client = ctx.client
        assert client.pid is None  # the context stopped the measurement worker it started
    finally:
        unsubscribe()
    assert events.count("cpu_pinning") == 1  # decided once, when the worker starts
    events = [e for e in events if e != "cpu_pinning"]
    assert events[:3] == ["server", "telemetry", "start"] and events.count("run") == 2
    with open_read_only(settings.warehouse_path) as con:
        assert con.execute("SELECT count(*) FROM llm_calls WHERE sweep_id = 'core-1'").fetchone()[0] == 4
        assert con.execute("SELECT count(*) FROM configs WHERE size_vram IS NOT NULL "
                           "OR ps_json IS NOT NULL").fetchone()[0] == 2


def test_a_resume_reads_the_order_seed_the_sweep_started_with(tmp_path):
    from tr111.warehouse import connect, writer
    from tr111.warehouse.reader import recorded_order_seed

    path = tmp_path / "w.duckdb"
    writer.start_sweep(path, {"sweep_id": "s1", "started_at": datetime.now(UTC), "status": "running",
                              "order_seed": 5, "run_order": "shuffled, runs of a config together"}, [])
    with connect(path) as con:
        assert recorded_order_seed(con, "s1") == 5 and recorded_order_seed(con, "other") is None
    req = request(order="shuffled")
    assert [k.name for k in planning.run_keys(req, set(), {}, {}, seed=5)] == \
        [k.name for k in planning.run_keys(req, set(), {}, {}, seed=5)]
