"""Fleet sweeps end to end on one machine (issue 12): a Prefect server on PostgreSQL, the fleet's
pool, queues and deployments made by tr111.flows.fleet_setup, two process workers standing in
for two GPU hosts (HOST_ID gpu-a / gpu-b), each with a fake Ollama of its own.

The coordinator runs in this process (as ``tr111 fleet sweep`` does); hosts' flow runs are
processes the workers start, writing shards into the shared folder."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.faults_support import no_duplicate_calls, one, rows
from tests.fleet_support import (find_pg_bindir, postgres_cluster, prefect_api, prefect_server,
                                 start_worker, stop_worker)
from tr111.fake_ollama.server import FakeOllama, FakeTimings

pytestmark = [pytest.mark.slow]

HOSTS = ("gpu-a", "gpu-b")
MATRIX = """
model: gemma3:270m
runs: 2
baseline: true
grid:
  num_ctx: [1024, 2048]
options:
  num_predict: 6
restart: per_config
order: grid
"""
CRASH_AFTER_S = 50  # the automation's window (90 s in production); heartbeats every 30 s


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, small_corpus):
    if find_pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    from tr111.flows.fleet_setup import setup

    base = tmp_path_factory.mktemp("fleet")
    fakes = {h: FakeOllama(FakeTimings(load_ms=20, token_ms=25, tokens=6)).start() for h in HOSTS}
    workers = {}
    with postgres_cluster() as pg, prefect_server(pg.url) as server, prefect_api(server.api_url):
        setup(list(HOSTS), crash_after_s=CRASH_AFTER_S)  # what `tr111 fleet setup` does
        try:
            for host in HOSTS:  # the hosts' workers exactly as a lab starts them
                workers[host] = _tr111_fleet_worker(server.api_url, host, fakes[host].url,
                                                    base / f"worker-{host}")
            # the coordinator's own queue: `prefect deployment run tr111-fleet/nightly` lands here
            workers["control"] = start_worker(
                server.api_url, "tr111-fleet", ["control"], "control",
                env={"TR111_GPU_TELEMETRY": "false"}, prefect_home=base / "worker-control", query_seconds=2)
            yield {"base": base, "fakes": fakes, "workers": workers, "server": server,
                   "corpus": small_corpus}
        finally:
            for proc in workers.values():
                stop_worker(proc)
            for fake in fakes.values():
                fake.stop()


def _tr111_fleet_worker(api_url: str, host: str, ollama_url: str, home: Path):
    """``tr111 fleet worker --host-id HOST --ollama-url URL`` (it execs Prefect's worker)."""
    import subprocess
    import sys

    from tests.faults_support import REPO
    from tests.fleet_support import prefect_child_env

    home.mkdir(parents=True, exist_ok=True)
    env = prefect_child_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home),
                            PREFECT_WORKER_PREFETCH_SECONDS="1",  # polls every 2 s, as `tr111 fleet worker` sets
                            TR111_GPU_TELEMETRY="false", TR111_RETRY_BACKOFF_S="0.01",
                            TR111_ENGINE="ollama")
    with open(home / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tr111.cli", "fleet", "worker", "--host-id", host,
                                 "--ollama-url", ollama_url], env=env, cwd=str(REPO), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_path, proc.prefect_home, proc.owns_home = home / "worker.log", home, False
    return proc


def _matrix(folder: Path, text: str = MATRIX) -> str:
    path = folder / "m.yaml"
    path.write_text(text)
    return str(path)


def _run_fleet(fleet, name: str, mode: str, **extra):
    from tr111.flows.fleet import tr111_fleet

    folder = fleet["base"] / name
    folder.mkdir(exist_ok=True)
    os.environ["TR111_GPU_TELEMETRY"] = "false"
    t0 = time.monotonic()
    result = tr111_fleet(hosts=list(HOSTS), mode=mode, matrix=_matrix(folder), sweep_id=name,
                         shared_dir=str(folder / "shared"), warehouse=str(folder / "wh.duckdb"),
                         out=str(folder / "reports"), corpus=str(fleet["corpus"]), poll_s=0.5,
                         **extra)
    return result, folder / "wh.duckdb", time.monotonic() - t0


def _measured(record: dict) -> bool:
    """A timed generate call (a restart's unload is a generate without a prompt)."""
    return record["path"] == "/api/generate" and bool((record.get("body") or {}).get("prompt"))


def _never_two_at_once(fake: FakeOllama) -> int:
    """The fake's own log: generate requests never overlap on one host. Returns their count."""
    spans = sorted((r["t_received_ns"], r["t_done_ns"]) for r in fake.requests
                   if r["path"] == "/api/generate" and r["t_done_ns"] is not None)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, "a host served two calls at once"
    return len(spans)


def test_a_host_whose_job_dies_mid_config_has_its_runs_finished_elsewhere(fleet):
    """Split mode: the flow-run process of one host is killed mid-config (its GPU job crashed);
    the worker marks it Crashed, the coordinator re-dispatches the config's unfinished runs."""
    victim = fleet["fakes"]["gpu-a"]
    start = len(victim.requests)
    killed = []

    def kill_first_job_on_gpu_a():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len([r for r in victim.requests[start:] if _measured(r)]) >= 3:
                from tests.fleet_support import _descendants

                for pid in _descendants(fleet["workers"]["gpu-a"].pid):
                    try:  # the flow-run process and its children (the measurement worker)
                        environ = Path(f"/proc/{pid}/environ").read_bytes()
                    except OSError:
                        continue
                    if b"PREFECT__FLOW_RUN_ID=" in environ:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_job_on_gpu_a, daemon=True)
    killer.start()
    result, wh, _ = _run_fleet(fleet, "split-kill", "split", report=False, redispatch=2)
    killer.join(5)
    assert killed, "the fault was not injected"
    assert result["sweeps"] == {"split-kill": "completed"}, rows(wh, "SELECT note FROM sweeps")
    assert "ended crashed" in one(wh, "SELECT note FROM sweeps")[0]
    assert one(wh, "SELECT count(*) FROM runs WHERE status = 'ok'") == (6,)
    assert one(wh, "SELECT count(*) FROM stat_calls") == (12,)
    assert no_duplicate_calls(wh)
    for fake in fleet["fakes"].values():
        _never_two_at_once(fake)


def test_the_coordinator_killed_mid_sweep_and_rerun_executes_no_config_twice(fleet):
    """``tr111 fleet sweep`` (split mode) is killed (-9) while hosts run its configs; the rerun
    with the same id merges what the hosts wrote, adopts the children still running (same
    idempotency keys) and dispatches nothing twice: the fakes see every measured call exactly
    once. The completed split sweep then has every row once, each config on one host, and a
    report with the fleet's hosts (section 4.5)."""
    import subprocess
    import sys

    from tests.faults_support import REPO

    folder = fleet["base"] / "coord-kill"
    folder.mkdir()
    argv = [sys.executable, "-m", "tr111.cli", "fleet", "sweep", "--hosts", ",".join(HOSTS),
            "--mode", "split", "--matrix", _matrix(folder), "--sweep-id", "coord-kill",
            "--shared-dir", str(folder / "shared"), "--warehouse", str(folder / "wh.duckdb"),
            "--out", str(folder / "reports"), "--corpus", str(fleet["corpus"])]
    env = {**os.environ, "PREFECT_API_URL": fleet["server"].api_url, "TR111_GPU_TELEMETRY": "false"}
    before_by_host = {h: len(f.requests) for h, f in fleet["fakes"].items()}
    before = sum(len([r for r in f.requests if _measured(r)]) for f in fleet["fakes"].values())
    first = subprocess.Popen(argv + ["--no-report"], env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.poll() is None:
        seen = sum(len([r for r in f.requests if _measured(r)]) for f in fleet["fakes"].values())
        if seen - before >= 3:
            break
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()[1][-2000:]
    first.kill()
    first.wait(10)
    again = subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sweep coord-kill: completed" in again.stdout
    wh = folder / "wh.duckdb"
    after = sum(len([r for r in f.requests if _measured(r)]) for f in fleet["fakes"].values())
    assert after - before == 12  # 6 runs x 2 calls, each once: no config ran twice
    assert one(wh, "SELECT count(*) FROM runs WHERE status = 'ok'") == (6,)
    assert one(wh, "SELECT count(*) FROM llm_calls") == (12,) and no_duplicate_calls(wh)
    for fake in fleet["fakes"].values():
        _never_two_at_once(fake)
    by_host = dict(rows(wh, "SELECT host, count(*) FROM runs GROUP BY host"))
    assert set(by_host) <= set(HOSTS) and sum(by_host.values()) == 6
    # a config's runs stay on one host (restart per config, cold/warm split intact)
    assert rows(wh, "SELECT config_id FROM runs GROUP BY config_id HAVING count(DISTINCT host) > 1") == []
    assert rows(wh, "SELECT count(*) FROM llm_calls c JOIN runs r USING (sweep_id, config_id, run_number)"
                    " WHERE c.host <> r.host") == [(0,)]
    served = {h: len([r for r in f.requests[before_by_host[h]:] if _measured(r)])
              for h, f in fleet["fakes"].items()}
    assert served == {h: 2 * by_host.get(h, 0) for h in HOSTS}  # the fakes saw exactly the rows
    assert one(wh, "SELECT fleet_id, fleet_mode, status FROM sweeps") == ("coord-kill", "split", "completed")
    assert {r[0] for r in rows(wh, "SELECT host_id FROM fleet_hosts")} == set(by_host)
    report = next((folder / "reports").rglob("technical_report.md")).read_text()
    assert "### 4.5 Hosts of fleet `coord-kill` (split)" in report
    assert "Host is not tested as a factor: in a split fleet each config ran on one host" in report
    assert not list((folder / "shared" / "shards" / "coord-kill").glob("*"))  # all merged


def test_the_nightly_deployment_runs_the_coordinator_on_the_control_queue(fleet):
    """`prefect deployment run tr111-fleet/nightly`: the coordinator itself is a flow run of the
    control queue's worker, which dispatches to the hosts' queues (never its own)."""
    from prefect.deployments import run_deployment

    folder = fleet["base"] / "nightly"
    folder.mkdir()
    run = run_deployment("tr111-fleet/nightly", timeout=300, poll_interval=1, parameters={
        "hosts": list(HOSTS), "mode": "replicate", "sweep_id": "nightly-1",
        "matrix": _matrix(folder, MATRIX.replace("baseline: true", "baseline: false")),  # 2 configs (CI time)
        "shared_dir": str(folder / "shared"), "warehouse": str(folder / "wh.duckdb"),
        "out": str(folder / "reports"), "corpus": str(fleet["corpus"]), "report": True, "poll_s": 0.5})
    assert run.state.is_completed(), run.state
    wh = folder / "wh.duckdb"
    assert sorted(rows(wh, "SELECT sweep_id, status FROM sweeps")) == [
        ("nightly-1-gpu-a", "completed"), ("nightly-1-gpu-b", "completed")]
    assert one(wh, "SELECT count(*) FROM stat_calls") == (16,) and no_duplicate_calls(wh)
    # replicate: every config on every host, a sweep per host describing that host
    assert sorted(rows(wh, "SELECT sweep_id, host, count(*) FROM runs WHERE status = 'ok' GROUP BY ALL")) == [
        ("nightly-1-gpu-a", "gpu-a", 4), ("nightly-1-gpu-b", "gpu-b", 4)]
    assert sorted(rows(wh, "SELECT sweep_id, host, engine, fleet_id, fleet_mode FROM sweeps")) == [
        ("nightly-1-gpu-a", "gpu-a", "ollama", "nightly-1", "replicate"),
        ("nightly-1-gpu-b", "gpu-b", "ollama", "nightly-1", "replicate")]
    for fake in fleet["fakes"].values():
        _never_two_at_once(fake)
    report = (folder / "reports" / "nightly-1-gpu-b" / "technical_report.md").read_text()
    assert "### 4.5 Hosts of fleet `nightly-1` (replicate)" in report
    table = report[report.index("### 4.5"):]
    assert "| `ctx1024` | analysis | gpu-a |" in table and "| `ctx1024` | analysis | gpu-b |" in table
    assert "**Host as a factor.** Two-way ANOVA" in table
    assert "| analysis | decode rate | 8 |" in table  # 2 configs x 2 runs x 2 hosts


def test_a_dead_host_s_job_is_marked_crashed_by_the_automation_and_finished_elsewhere(fleet):
    """The whole host dies (its worker and its job, kill -9): nothing reports the job's end, so
    Prefect would show it Running forever. The heartbeat automation `tr111 fleet setup` creates
    marks it Crashed; the coordinator re-dispatches the unfinished runs to the other host.
    Runs last in this module: it restarts gpu-a's worker afterwards."""
    from tests.fleet_support import _descendants

    victim = fleet["fakes"]["gpu-a"]
    start = len(victim.requests)
    killed = []

    def kill_host_a():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len([r for r in victim.requests[start:] if _measured(r)]) >= 2:
                worker = fleet["workers"]["gpu-a"]
                doomed = [worker.pid, *_descendants(worker.pid)]
                for pid in doomed:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_host_a, daemon=True)
    killer.start()
    t0 = time.monotonic()
    try:
        result, wh, wall = _run_fleet(fleet, "host-dies", "split", report=False, redispatch=2)
    finally:
        killer.join(5)
        fleet["workers"]["gpu-a"].wait(10)
        fleet["workers"]["gpu-a"] = _tr111_fleet_worker(fleet["server"].api_url, "gpu-a",
                                                        victim.url, fleet["base"] / "worker-gpu-a-2")
    print(f"host death: sweep finished {wall:.1f} s after start ({time.monotonic() - t0:.1f} s)")
    assert killed, "the fault was not injected"
    assert result["sweeps"] == {"host-dies": "completed"}, rows(wh, "SELECT note FROM sweeps")
    assert "ended crashed" in one(wh, "SELECT note FROM sweeps")[0]
    assert one(wh, "SELECT count(*) FROM runs WHERE status = 'ok'") == (6,)
    assert one(wh, "SELECT count(*) FROM stat_calls") == (12,) and no_duplicate_calls(wh)
    assert one(wh, "SELECT count(*) FROM runs WHERE host = 'gpu-b'")[0] >= 1  # gpu-b took over
