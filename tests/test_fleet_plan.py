"""tr111.fleet without Prefect: which jobs a fleet sweep dispatches, and where rows go."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tr111.errors import ConfigError
from tr111.fleet import coordinator, plan as fleet_plan
from tr111.matrix import expand, parse_matrix
from tr111.run.plan import SweepRequest
from tr111.warehouse import open_read_only, shards, writer

MATRIX = {"model": "gemma3:270m", "runs": 2, "baseline": True, "grid": {"num_ctx": [1024, 2048]},
          "options": {"num_predict": 4}}


def _request(fleet_id: str = "f1") -> SweepRequest:
    matrix = parse_matrix(MATRIX)
    return SweepRequest(matrix, expand(matrix), fleet_id)


def test_split_is_one_sweep_with_a_job_per_config_on_the_shared_queue(tmp_path):
    fleet = fleet_plan.FleetRequest(hosts=["gpu-a", "gpu-b"], mode="split", shared_dir=tmp_path)
    jobs = fleet_plan.jobs_for("f1", _request(), fleet, {})
    assert fleet_plan.sweep_ids("f1", fleet) == {None: "f1"}
    assert [(j.sweep_id, j.config_id, j.queue, j.run_numbers) for j in jobs] == [
        ("f1", "baseline_default", "split", (1, 2)), ("f1", "ctx1024", "split", (1, 2)),
        ("f1", "ctx2048", "split", (1, 2))]
    assert jobs[0].run_attempts == {1: 1, 2: 1} and jobs[0].call_attempts["2:analysis"] == 1


def test_replicate_is_a_sweep_per_host_with_every_config_on_each_host_s_queue(tmp_path):
    fleet = fleet_plan.FleetRequest(hosts=["gpu-a", "gpu-b"], mode="replicate", shared_dir=tmp_path)
    jobs = fleet_plan.jobs_for("f1", _request(), fleet, {})
    assert fleet_plan.sweep_ids("f1", fleet) == {"gpu-a": "f1-gpu-a", "gpu-b": "f1-gpu-b"}
    assert sorted((j.sweep_id, j.queue) for j in jobs) == sorted(
        [("f1-gpu-a", "host-gpu-a")] * 3 + [("f1-gpu-b", "host-gpu-b")] * 3)
    assert len({j.idempotency_key(1) for j in jobs}) == 6  # no two jobs share a child run
    assert jobs[0].idempotency_key(1) != jobs[0].idempotency_key(2)


def test_only_unfinished_runs_are_dispatched_with_their_next_attempts(tmp_path):
    fleet = fleet_plan.FleetRequest(hosts=["gpu-a"], mode="split", shared_dir=tmp_path)
    done = {("baseline_default", 1), ("baseline_default", 2), ("ctx1024", 1)}
    calls = {("ctx1024", 2, "analysis"): 3}
    runs = {("ctx1024", 2): 1}
    jobs = fleet_plan.jobs_for("f1", _request(), fleet, {"f1": (done, calls, runs)})
    by_config = {j.config_id: j for j in jobs}
    assert set(by_config) == {"ctx1024", "ctx2048"}  # the baseline is done
    assert by_config["ctx1024"].run_numbers == (2,)
    assert by_config["ctx1024"].run_attempts == {2: 2}
    assert by_config["ctx1024"].call_attempts["2:analysis"] == 4
    keys = fleet_plan.host_run_keys(_request().configs[1], [2], {"2": 2}, {"2:analysis": 4})
    assert [(k.run_number, k.run_attempt, k.first_call_attempts["analysis"], k.follows_other_config)
            for k in keys] == [(2, 2, 4, True)]


@pytest.mark.parametrize("hosts", [[], ["gpu-a", "gpu-a"], ["../etc"], ["a b"]])
def test_bad_host_lists_are_refused(tmp_path, hosts):
    with pytest.raises(ValidationError):
        fleet_plan.FleetRequest(hosts=hosts, mode="split", shared_dir=tmp_path)
    with pytest.raises(ConfigError, match="^fleet hosts: "):
        fleet_plan.FleetRequest.build(hosts=hosts, mode="split", shared_dir=tmp_path)


def test_hosts_shards_merge_into_the_coordinator_s_warehouse_once_with_their_host(tmp_path):
    """A host writes shards only (merge=False); the coordinator merges them, idempotently."""
    wh = tmp_path / "wh.duckdb"
    fleet = fleet_plan.FleetRequest(hosts=["gpu-a", "gpu-b"], mode="replicate", shared_dir=tmp_path / "shared")
    coordinator.begin(wh, "f1", _request(), fleet)
    root = coordinator.shard_root(fleet)
    for host in ("gpu-a", "gpu-b"):
        run = {"sweep_id": f"f1-{host}", "config_id": "ctx1024", "run_number": 1, "status": "ok",
               "run_attempt": 1, "host": host}
        call = {"sweep_id": f"f1-{host}", "config_id": "ctx1024", "run_number": 1, "stage": "analysis",
                "attempt": 1, "run_attempt": 1, "status": "ok", "host": host}
        outcome = writer.record_run(wh, run, [call], root=root, merge=False)
        assert outcome.merged == 0  # a host never opens the warehouse
        writer.record_host(wh, {"sweep_id": f"f1-{host}", "host_id": host, "server_version": "0.12",
                                "engine": "ollama", "environment_json": "{}"}, root=root, merge=False)
    assert len(shards.pending_shards(wh, root=root)) == 4
    assert coordinator.merge(wh, "f1", fleet) == 0
    assert coordinator.merge(wh, "f1", fleet) == 0  # again: nothing left, nothing doubled
    with open_read_only(wh) as con:
        assert con.execute("SELECT sweep_id, host FROM runs ORDER BY 1").fetchall() == [
            ("f1-gpu-a", "gpu-a"), ("f1-gpu-b", "gpu-b")]
        assert con.execute("SELECT count(*), count(DISTINCT host) FROM llm_calls").fetchone() == (2, 2)
        assert con.execute("SELECT fleet_id, fleet_mode FROM sweeps WHERE sweep_id = 'f1-gpu-a'"
                           ).fetchone() == ("f1", "replicate")
    statuses = coordinator.finish(wh, "f1", fleet, _request(), {"f1-gpu-b": ["ctx2048@gpu-b ended crashed"]})
    assert statuses == {"f1-gpu-a": "completed_with_errors", "f1-gpu-b": "completed_with_errors"}
    with open_read_only(wh) as con:
        note, host, version = con.execute(
            "SELECT note, host, server_version FROM sweeps WHERE sweep_id = 'f1-gpu-b'").fetchone()
    assert note.startswith("failed runs: baseline_default-run1") and note.endswith("ctx2048@gpu-b ended crashed")
    assert (host, version) == ("gpu-b", "0.12")  # the host's own environment, adopted


def test_a_job_that_lands_on_the_wrong_host_refuses_to_run(tmp_path, monkeypatch):
    """A worker polling another host's queue must not measure that host's config."""
    from tr111.flows.fleet import tr111_fleet_config

    monkeypatch.setenv("HOST_ID", "gpu-b")
    with pytest.raises(ConfigError, match="^job for host gpu-a ran on gpu-b"):
        tr111_fleet_config.fn(sweep_id="f1", config_id="ctx1024", run_numbers=[1], run_attempts={},
                              call_attempts={}, matrix=MATRIX, shared_dir=str(tmp_path),
                              expected_host="gpu-a")
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_fleet_sweep_is_compared_with_its_own_host_s_previous_sweep(tmp_path):
    """The nightly regression check of a replicate fleet: gpu-b's sweep against gpu-b's last one,
    never against gpu-a's sweep of the same night; single-host sweeps keep their old rule."""
    from datetime import UTC, datetime

    from tr111.report.queries import previous_sweep
    from tr111.warehouse import connect

    wh = tmp_path / "wh.duckdb"
    matrix = '{"model": "m"}'
    night = lambda d, h: datetime(2026, 12, d, h, tzinfo=UTC)  # noqa: E731
    rows_ = [("n1-gpu-a", "gpu-a", "n1", night(1, 1)), ("n1-gpu-b", "gpu-b", "n1", night(1, 2)),
             ("n2-gpu-a", "gpu-a", "n2", night(2, 1)), ("n2-gpu-b", "gpu-b", "n2", night(2, 2)),
             ("solo-1", "lab-pc", None, night(2, 3)), ("solo-2", "lab-pc", None, night(2, 4))]
    with connect(wh) as con:
        for sweep_id, host, fleet_id, started in rows_:
            con.execute("INSERT INTO sweeps (sweep_id, host, fleet_id, started_at, status, matrix_json, model)"
                        " VALUES (?, ?, ?, ?, 'completed', ?, 'm')", [sweep_id, host, fleet_id, started, matrix])
        sweeps = {r[0]: dict(zip([d[0] for d in con.description], r))
                  for r in con.execute("SELECT * FROM sweeps").fetchall()}
        assert previous_sweep(con, sweeps["n2-gpu-b"]) == "n1-gpu-b"  # not n2-gpu-a, started before it
        assert previous_sweep(con, sweeps["n2-gpu-a"]) == "n1-gpu-a"
        assert previous_sweep(con, sweeps["n1-gpu-b"]) is None
        assert previous_sweep(con, sweeps["solo-2"]) == "solo-1"


def test_the_fleet_worker_runs_the_documented_prefect_line():
    from tr111.cli.fleet import worker_command

    import sys

    assert worker_command("gpu-a") == [
        sys.executable, "-m", "prefect", "worker", "start", "--pool", "tr111-fleet", "--type", "process",
        "--work-queue", "host-gpu-a", "--work-queue", "split", "--limit", "1", "--name", "tr111-gpu-a"]
    doc = (fleet_plan.Path(__file__).resolve().parents[1] / "docs" / "fleet.md").read_text()
    assert "--work-queue split --limit 1 --name tr111-gpu-a" in doc.replace("\\\n#       ", "")


def test_a_fleet_command_without_a_shared_prefect_server_is_one_line():
    import os

    from tests.faults_support import cli_process

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    done = cli_process("fleet", "sweep", "--hosts", "gpu-a", env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == ("tr111: error: a fleet needs the Prefect server its hosts share:"
                                   " set PREFECT_API_URL (see docs/fleet.md)")
