"""The Prefect flows under prefect_test_harness, against the fake Ollama server."""

from __future__ import annotations

import asyncio

import pytest

from tr111.errors import ModelNotFoundError
from tr111.warehouse import open_read_only

pytestmark = pytest.mark.usefixtures("prefect_harness")

MATRIX = """
model: gemma3:latest
runs: 2
baseline: true
grid:
  num_ctx: [512, 1024]
options: {num_predict: 6}
restart: per_config
order: grid
"""


@pytest.fixture
def sweep_env(tmp_path, monkeypatch, small_corpus):
    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.01")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    return {"matrix": str(matrix), "warehouse": str(tmp_path / "wh.duckdb"),
            "out": str(tmp_path / "reports"), "corpus": str(small_corpus)}


def _run(fake, env, restart="unload", **kw):
    from tr111.flows.sweep import tr111_sweep

    return tr111_sweep(ollama_url=fake.url, restart=restart, **env, **kw)


def test_sweep_fills_every_table_and_renders_the_report(fake_ollama, sweep_env):
    result = _run(fake_ollama, sweep_env, sweep_id="s-flow")
    assert result["status"] == "completed" and result["failed_runs"] == []
    with open_read_only(sweep_env["warehouse"]) as con:
        sweep = con.execute("SELECT status, server_version, model, finished_at IS NOT NULL FROM sweeps").fetchone()
        assert sweep == ("completed", "0.12.0-fake", "gemma3:latest", True)
        configs = con.execute("SELECT config_id, num_ctx, context_length FROM configs ORDER BY position").fetchall()
        assert configs == [("baseline_default", None, 4096), ("ctx512", 512, 512), ("ctx1024", 1024, 1024)]
        assert con.execute("SELECT count(*), count(*) FILTER (status = 'ok') FROM runs").fetchone() == (6, 6)
        assert con.execute("SELECT count(*) FROM llm_calls WHERE status = 'ok'").fetchone()[0] == 12
        # restart per_config: run 1 restarts (unload) and is cold, run 2 does not.
        cold = dict(con.execute("SELECT run_number, bool_and(cold) FROM runs GROUP BY 1").fetchall())
        assert cold == {1: True, 2: False}
        assert con.execute("SELECT count(*) FROM config_summary").fetchone()[0] == 3
        prompts = con.execute("SELECT prompt FROM llm_calls WHERE stage = 'analysis'").fetchall()
    # Cache busting: every run's prompt starts with its own first line.
    assert len({p[0].splitlines()[0] for p in prompts}) == 6
    report = open(result["report"]).read()
    assert "ctx1024" in report and "Aggregate performance" in report


def test_each_run_is_its_own_dag_of_five_tasks(fake_ollama, sweep_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    _run(fake_ollama, sweep_env, sweep_id="s-dag", report=False)

    async def task_runs():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["ctx512-run1"])))
            assert runs, "the run subflow is named after its config and run"
            # Runs are independent: the sweep's graph has no edges between run subflows.
            parent = await client.read_task_run(runs[-1].parent_task_run_id)
            assert all(not group for group in parent.task_inputs.values()), parent.task_inputs
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [runs[-1].id]}))

    tasks = asyncio.run(task_runs())
    names = {t.name.rsplit("-", 1)[0]: t for t in tasks}
    assert set(names) == {"restart-ollama", "ingest", "analysis-call", "report-call", "record"}
    ids = {t.id: t.name.rsplit("-", 1)[0] for t in tasks}

    def upstream(name):
        inputs = names[name].task_inputs
        return {ids[i.id] for group in inputs.values() for i in group if getattr(i, "id", None) in ids}

    assert upstream("ingest") == {"restart-ollama"}
    assert upstream("analysis-call") == {"ingest"}
    assert upstream("report-call") == {"analysis-call"}
    assert upstream("record") == {"report-call"}


def test_transient_faults_are_retried_and_kept_as_error_rows(fake_ollama, sweep_env):
    fake_ollama.inject("http500", "drop:2")  # the first generate requests: no unload before them
    result = _run(fake_ollama, sweep_env, sweep_id="s-retry", restart="none")
    assert result["status"] == "completed"
    with open_read_only(sweep_env["warehouse"]) as con:
        errors = con.execute("SELECT config_id, run_number, stage, attempt, error FROM llm_calls"
                             " WHERE status = 'error' ORDER BY attempt").fetchall()
        ok = con.execute("SELECT attempt FROM llm_calls WHERE status = 'ok' AND config_id = 'baseline_default'"
                         " AND run_number = 1 AND stage = 'analysis'").fetchone()
        calls = con.execute("SELECT calls FROM config_summary WHERE config_id = 'baseline_default'").fetchone()
    assert [(e[0], e[1], e[2], e[3]) for e in errors] == [
        ("baseline_default", 1, "analysis", 1), ("baseline_default", 1, "analysis", 2)]
    assert "HTTP 500" in errors[0][4] and "dropped" in errors[1][4]
    assert ok == (3,)
    assert calls == (4,)  # statistics count the successful attempts only


def test_unknown_model_fails_at_once_without_rows(fake_ollama, sweep_env):
    with pytest.raises(ModelNotFoundError):
        _run(fake_ollama, sweep_env, sweep_id="s-404", model="nope:1b")
    assert fake_ollama.generate_calls == 0


def test_resume_executes_only_unfinished_runs(fake_ollama, sweep_env):
    import duckdb

    _run(fake_ollama, sweep_env, sweep_id="s-resume", report=False)
    con = duckdb.connect(sweep_env["warehouse"])
    con.execute("DELETE FROM runs WHERE config_id = 'ctx1024'")  # as if killed before these
    con.close()
    before = fake_ollama.generate_calls
    result = _run(fake_ollama, sweep_env, sweep_id="s-resume", report=False)
    assert result["status"] == "completed"
    executed = fake_ollama.generate_calls - before
    assert executed == 2 * 2 + 1  # two runs x two calls, plus the unload of the restart
    with open_read_only(sweep_env["warehouse"]) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 6
        dup = con.execute("SELECT count(*) FROM (SELECT config_id, run_number, stage, attempt FROM llm_calls"
                          " GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
        assert dup == 0
        assert con.execute("SELECT sum(calls) FROM config_summary").fetchone()[0] == 12
