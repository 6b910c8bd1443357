"""Fault matrix, server side (docs/reliability.md): a server that refuses, dies, never comes
back, does not know the model, or answers with 500s, dropped/stalled/garbled streams."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faults_support import (REPO, at, cli, no_duplicate_calls, one, rows, run_sweep,
                            stderr_lines, sweep_paths, write_matrix)
from tr111.errors import ModelNotFoundError
from tr111.fake_ollama.server import FakeOllama, FakeTimings

pytestmark = pytest.mark.usefixtures("prefect_harness")

BASELINE_ONLY = """
model: gemma3:latest
runs: {runs}
baseline: true
options: {{num_predict: 8}}
restart: never
"""

TWO_CONFIGS = """
model: gemma3:latest
runs: {runs}
baseline: true
grid:
  num_ctx: [8192]
options: {{num_predict: 8}}
restart: per_config
"""


@pytest.fixture(autouse=True)
def _fast_settings(monkeypatch):
    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.01")
    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")


@pytest.fixture
def fake():
    with FakeOllama(FakeTimings(load_ms=5, token_ms=2, tokens=8)) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_refused(fake: FakeOllama, timeout: float = 5.0) -> None:
    """Until the dead fake's port refuses connections (go_down closes the listener last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", fake.port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.01)
    raise AssertionError("the fake still accepts connections")


def _bring_back_after(fake: FakeOllama, seconds: float) -> threading.Thread:
    """Once the fake has gone down (a 'die' fault), bring it back ``seconds`` later."""
    def watch():
        deadline = time.monotonic() + 120
        while fake.is_up and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(seconds)
        fake.come_up()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _sweep_row(warehouse, sweep_id):
    return one(warehouse, "SELECT status, note FROM sweeps WHERE sweep_id = ?", [sweep_id])


def test_fake_places_faults_by_prompt_and_dies_on_request(fake):
    """The fake's controls this matrix relies on: inject_when() and the 'die' fault."""
    from tr111.errors import ServerUnavailableError, TransientError
    from tr111.ollama.client import OllamaClient

    fake.inject("http503")  # requests that match no inject_when() consume the plain queue
    fake.inject_when("/c/run2.", "http500", "garbage")
    fake.inject_when(lambda body: "report" in body.get("prompt", ""), "die:1")
    with OllamaClient(fake.url) as client:
        def outcome(prompt: str) -> str:
            try:
                return client.generate("gemma3", prompt).status
            except (TransientError, ServerUnavailableError) as exc:
                return str(exc)

        assert "HTTP 503" in outcome("Session s/c/run1. x")
        assert "HTTP 500" in outcome("Session s/c/run2. x")
        assert outcome("Session s/c/run1. x") == "ok"
        assert "malformed NDJSON" in outcome("Session s/c/run2. x")
        assert outcome("Session s/c/run2. x") == "ok"
        assert fake.pending_faults == ["die:1"]
        assert "stream dropped" in outcome("write the report")
        _wait_refused(fake)
        assert "cannot connect" in outcome("write the report")
        fake.come_up()
        assert outcome("write the report") == "ok"
    assert fake.pending_faults == [] and fake.handler_errors == []


# --- refused / unknown model at start (CLI: exit code and stderr matter) ----------------------

@pytest.mark.slow
def test_refused_at_start_is_one_line_and_leaves_the_warehouse_alone(tmp_path):
    """The warehouse already holds a finished sweep; a sweep whose server refuses adds nothing."""
    from tr111.warehouse import writer

    warehouse = tmp_path / "wh.duckdb"
    writer.start_sweep(warehouse, {"sweep_id": "old", "status": "running", "model": "m"}, [])
    writer.finish_sweep(warehouse, "old", "completed")
    port = _free_port()
    done = cli("sweep", "--ollama-url", f"http://127.0.0.1:{port}", "--warehouse", str(warehouse),
               "--out", str(tmp_path / "out"), "--sweep-id", "new")
    assert done.returncode == 1
    assert stderr_lines(done) == [f"tr111: error: no Ollama answers at http://127.0.0.1:{port}"
                                  " (GET /api/version failed)"]
    assert "Traceback" not in done.stderr + done.stdout
    assert rows(warehouse, "SELECT sweep_id, status FROM sweeps") == [("old", "completed")]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unknown_model_at_start_is_one_line_without_retries(tmp_path, fake, small_corpus):
    matrix = write_matrix(tmp_path, BASELINE_ONLY.format(runs=1))
    warehouse = tmp_path / "wh.duckdb"
    done = cli("sweep", "--matrix", matrix, "--ollama-url", fake.url, "--model", "nope:1b",
               "--corpus", str(small_corpus), "--warehouse", str(warehouse), "--sweep-id", "s404")
    assert done.returncode == 1
    lines = stderr_lines(done)
    assert lines[-1] == "tr111: error: /api/show: model 'nope:1b' not found"
    assert [l for l in lines if l.startswith("tr111: error")] == lines[-1:]
    assert "Traceback" not in done.stderr
    assert fake.generate_calls == 0
    assert [r["path"] for r in fake.requests].count("/api/show") == 1  # no retry
    assert not warehouse.exists() or rows(warehouse, "SELECT * FROM sweeps") == []


def test_unknown_model_mid_sweep_is_terminal_without_retry(tmp_path, fake, small_corpus):
    """A 404 on a generate (model removed mid-sweep): one attempt, kept as an error row, sweep failed."""
    paths = sweep_paths(tmp_path, small_corpus)
    fake.inject_when(at("baseline_default", 2, "analysis"), "notfound")
    with pytest.raises(ModelNotFoundError, match="not found"):
        run_sweep(fake.url, write_matrix(tmp_path, BASELINE_ONLY.format(runs=3)), paths, sweep_id="s-404")
    tries = [r for r in fake.requests if r["path"] == "/api/generate"
             and "/baseline_default/run2." in (r["body"] or {}).get("prompt", "")]
    assert len(tries) == 1
    status, note = _sweep_row(paths["warehouse"], "s-404")
    assert status == "failed" and "not found" in note
    assert rows(paths["warehouse"], "SELECT run_number, stage, attempt, status FROM llm_calls"
                                    " WHERE run_number = 2") == [(2, "analysis", 1, "error")]
    assert rows(paths["warehouse"], "SELECT run_number FROM runs") == [(1,)]  # run 3 never started


# --- the server dies mid-sweep ---------------------------------------------------------------

def test_server_dies_mid_call_and_is_back_within_the_backoff(tmp_path, fake, small_corpus, monkeypatch):
    """Killed mid-stream, back 0.4 s later: retried with growing delays, every run ok."""
    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.25")  # delays 0.25, 0.5, 1.0 s
    paths = sweep_paths(tmp_path, small_corpus)
    fake.inject_when(at("baseline_default", 2, "analysis"), "die:2")
    watcher = _bring_back_after(fake, 0.4)
    result = run_sweep(fake.url, write_matrix(tmp_path, BASELINE_ONLY.format(runs=3)), paths,
                       sweep_id="s-die")
    watcher.join(5)
    assert result["status"] == "completed" and result["failed_runs"] == []
    wh = paths["warehouse"]
    attempts = rows(wh, "SELECT attempt, status, error, started_at FROM llm_calls WHERE run_number = 2"
                        " AND stage = 'analysis' ORDER BY attempt")
    errors = [a for a in attempts if a[1] == "error"]
    assert errors and "stream dropped" in errors[0][2]
    # later attempts meet the dead server: refused (or, while it is going down, cut)
    assert all("cannot connect" in e[2] or "stream dropped" in e[2] for e in errors[1:])
    assert attempts[-1][:2] == (len(errors) + 1, "ok")
    starts = [a[3] for a in attempts]
    for i in range(1, len(starts)):  # backoff: the i-th retry waits at least 0.25 * 2**(i-1) s
        assert (starts[i] - starts[i - 1]).total_seconds() >= 0.25 * 2 ** (i - 1) * 0.9
    assert rows(wh, "SELECT count(*), count(*) FILTER (status = 'ok') FROM runs") == [(3, 3)]
    assert one(wh, "SELECT calls FROM config_summary")[0] == 6  # only the ok attempts count
    assert no_duplicate_calls(wh)


def test_server_down_past_the_retries_fails_that_run_and_resume_finishes_it(tmp_path, fake, small_corpus,
                                                                              monkeypatch):
    """Down longer than the retries but back within the restart timeout: the sweep goes on,
    ends completed_with_errors naming the failed run; a rerun with the same id runs only it."""
    monkeypatch.setenv("TR111_RETRIES", "2")
    monkeypatch.setenv("TR111_RESTART_TIMEOUT_S", "60")
    paths = sweep_paths(tmp_path, small_corpus)
    matrix = write_matrix(tmp_path, BASELINE_ONLY.format(runs=3))
    fake.inject_when(at("baseline_default", 2, "analysis"), "die:2")
    watcher = _bring_back_after(fake, 3.0)
    result = run_sweep(fake.url, matrix, paths, sweep_id="s-down")
    watcher.join(10)
    wh = paths["warehouse"]
    assert result["status"] == "completed_with_errors"
    assert result["failed_runs"] == ["baseline_default-run2"]
    assert _sweep_row(wh, "s-down") == ("completed_with_errors", "failed runs: baseline_default-run2")
    assert rows(wh, "SELECT run_number, status FROM runs ORDER BY 1") == [(1, "ok"), (2, "error"), (3, "ok")]
    assert one(wh, "SELECT count(*) FROM llm_calls WHERE run_number = 2 AND status = 'error'")[0] == 3

    before = fake.generate_calls
    again = run_sweep(fake.url, matrix, paths, sweep_id="s-down")
    assert again["status"] == "completed"
    assert fake.generate_calls - before == 2  # only run 2's two calls
    assert rows(wh, "SELECT run_number, status, run_attempt FROM runs ORDER BY 1") == [
        (1, "ok", 1), (2, "ok", 2), (3, "ok", 1)]
    assert one(wh, "SELECT calls FROM config_summary")[0] == 6
    assert one(wh, "SELECT count(*) FROM stat_calls WHERE run_number = 2 AND run_attempt = 1")[0] == 0
    assert no_duplicate_calls(wh)


@pytest.mark.slow
def test_server_that_never_comes_back_stops_the_sweep_naming_unfinished_runs(tmp_path, fake, small_corpus):
    """CLI: exit 1, one error line naming the unfinished runs; the sweep row says incomplete."""
    matrix = write_matrix(tmp_path, BASELINE_ONLY.format(runs=3))
    warehouse = tmp_path / "wh.duckdb"
    fake.inject_when(at("baseline_default", 2, "analysis"), "die:2")
    done = cli("sweep", "--matrix", matrix, "--ollama-url", fake.url, "--restart", "none",
               "--corpus", str(small_corpus), "--warehouse", str(warehouse), "--sweep-id", "s-gone",
               "--no-report", env={"TR111_RESTART_TIMEOUT_S": "0.5", "TR111_RETRIES": "1"})
    assert done.returncode == 1, done.stderr[-2000:]
    lines = stderr_lines(done)
    expected = (f"tr111: error: server at {fake.url} did not come back within 0.5 s;"
                " unfinished runs (2): baseline_default-run2, baseline_default-run3")
    assert lines[-1] == expected
    assert [l for l in lines if l.startswith("tr111: error")] == [expected]
    assert "Traceback" not in done.stderr
    status, note = _sweep_row(warehouse, "s-gone")
    assert status == "incomplete" and "baseline_default-run2, baseline_default-run3" in note
    assert rows(warehouse, "SELECT run_number, status FROM runs ORDER BY 1") == [(1, "ok"), (2, "error")]
    assert one(warehouse, "SELECT count(*) FROM llm_calls WHERE status = 'ok' AND run_number = 2")[0] == 0


# --- restart strategy 'command' against a real server process ---------------------------------

@pytest.fixture
def fake_process(tmp_path):
    """A fake Ollama in its own process, restartable by tests/restart_fake.py."""
    from restart_fake import fake_argv

    port = _free_port()
    proc = subprocess.Popen(fake_argv(port), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=str(REPO))
    url = proc.stdout.readline().strip()
    assert url == f"http://127.0.0.1:{port}"
    pidfile = tmp_path / "fake.pid"
    pidfile.write_text(str(proc.pid))
    yield {"url": url, "port": port, "pidfile": pidfile, "proc": proc}
    try:
        pid = int(pidfile.read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    for victim in {pid, proc.pid} - {0}:
        try:
            import os
            import signal

            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def _restart_command(server: dict, mode: str, log: Path) -> list[str]:
    return [sys.executable, str(REPO / "tests" / "restart_fake.py"), str(server["pidfile"]),
            str(server["port"]), mode, str(log), "x; touch PWNED $(id)"]


@pytest.mark.slow
def test_command_restart_really_restarts_the_server_from_an_argv(tmp_path, fake_process, small_corpus,
                                                                  monkeypatch):
    log = tmp_path / "restart.log"
    argv = _restart_command(fake_process, "up", log)
    monkeypatch.setenv("TR111_RESTART_COMMAND", json.dumps(argv))
    monkeypatch.setenv("TR111_RESTART_TIMEOUT_S", "30")
    monkeypatch.chdir(tmp_path)
    paths = sweep_paths(tmp_path, small_corpus)
    first_pid = fake_process["pidfile"].read_text()
    result = run_sweep(fake_process["url"], write_matrix(tmp_path, TWO_CONFIGS.format(runs=1)), paths,
                       restart="command", sweep_id="s-cmd")
    assert result["status"] == "completed"
    assert fake_process["pidfile"].read_text() != first_pid  # a new server process answered
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [argv[2:]] * 2  # one restart per config; argv passed as a list, verbatim
    assert not list(tmp_path.glob("PWNED*")) and not list(REPO.glob("PWNED*"))  # no shell
    restarts = rows(paths["warehouse"], "SELECT restart_strategy, restart_ms FROM runs")
    assert len(restarts) == 2 and all(s == "command" and ms > 0 for s, ms in restarts)


@pytest.mark.slow
def test_command_restart_that_never_brings_the_server_back_stops_incomplete(tmp_path, fake_process,
                                                                            small_corpus, monkeypatch):
    """The first config's restart works; the second one's kills the server for good."""
    from tr111.errors import SweepIncompleteError

    log = tmp_path / "restart.log"
    once = tmp_path / "once"
    # 'up' the first time, 'down' afterwards: the script is run through a tiny argv wrapper.
    wrapper = [sys.executable, "-c",
               "import os, subprocess, sys; first = not os.path.exists(sys.argv[1]);"
               " open(sys.argv[1], 'a').close(); args = sys.argv[2:];"
               " args[4] = 'up' if first else 'down'; sys.exit(subprocess.call(args))",
               str(once), *_restart_command(fake_process, "?", log)]
    monkeypatch.setenv("TR111_RESTART_COMMAND", json.dumps(wrapper))
    monkeypatch.setenv("TR111_RESTART_TIMEOUT_S", "2")  # time enough for the first, real restart
    monkeypatch.setenv("TR111_RETRIES", "1")
    paths = sweep_paths(tmp_path, small_corpus)
    with pytest.raises(SweepIncompleteError) as caught:
        run_sweep(fake_process["url"], write_matrix(tmp_path, TWO_CONFIGS.format(runs=2)), paths,
                  restart="command", sweep_id="s-cmd-gone")
    assert str(caught.value).endswith("unfinished runs (2): ctx8192-run1, ctx8192-run2")
    status, note = _sweep_row(paths["warehouse"], "s-cmd-gone")
    assert status == "incomplete" and note == str(caught.value)
    assert rows(paths["warehouse"], "SELECT config_id, run_number, status, coalesce(error, '') LIKE '%did not answer%'"
                                    " FROM runs ORDER BY 1, 2") == [
        ("baseline_default", 1, "ok", False), ("baseline_default", 2, "ok", False),
        ("ctx8192", 1, "error", True)]
    assert len(log.read_text().splitlines()) == 3  # first restart, then the retried failing one


# --- transient faults of every kind: retried, kept as rows, statistics unchanged in kind -------

MIXED = """
model: gemma3:latest
runs: 2
baseline: true
grid:
  temperature: [0.5]
options: {num_predict: 8}
restart: never
"""

FAULTS = {  # (config, run, stage) -> (fault, what the error row says)
    ("baseline_default", 1, "analysis"): ("drop:3", "stream dropped"),
    ("baseline_default", 1, "report"): ("no_metrics", "final chunk carries no metrics"),
    ("baseline_default", 2, "analysis"): ("http500", "HTTP 500"),
    ("baseline_default", 2, "report"): ("error_chunk", "server error mid-stream"),
    ("temp0p5", 1, "analysis"): ("stall:30", "timed out (ReadTimeout)"),
    ("temp0p5", 1, "report"): ("refuse", "stream dropped"),  # connection closed, no response
    ("temp0p5", 2, "analysis"): ("http503", "HTTP 503"),
    ("temp0p5", 2, "report"): ("garbage", "malformed NDJSON line"),
}
SUMMARY = ("SELECT config_id, calls, avg_throughput_tps, stddev_throughput_tps, cv_throughput_pct,"
           " avg_ttft_ms, stddev_ttft_ms, cv_ttft_pct, total_tokens FROM config_summary"
           " WHERE sweep_id = ? ORDER BY config_id")


@pytest.mark.slow
def test_mixed_fault_sweep_completes_with_figures_of_the_same_kind_as_a_clean_one(
        tmp_path, fake, small_corpus, monkeypatch):
    monkeypatch.setenv("TR111_READ_TIMEOUT_S", "1.5")  # the stall is cut by httpx's read timeout
    paths = sweep_paths(tmp_path, small_corpus)
    matrix = write_matrix(tmp_path, MIXED)
    clean = run_sweep(fake.url, matrix, paths, sweep_id="s-clean")
    for (config_id, run, stage), (fault, _) in FAULTS.items():
        fake.inject_when(at(config_id, run, stage), fault)
    faulted = run_sweep(fake.url, matrix, paths, sweep_id="s-faults")
    assert fake.pending_faults == []
    assert clean["status"] == faulted["status"] == "completed"
    wh = paths["warehouse"]
    assert rows(wh, "SELECT count(*), count(*) FILTER (status = 'ok') FROM runs WHERE sweep_id = 's-faults'"
                ) == [(4, 4)]

    errors = rows(wh, "SELECT config_id, run_number, stage, attempt, error, wall_ms FROM llm_calls"
                      " WHERE sweep_id = 's-faults' AND status = 'error' ORDER BY ALL")
    assert {(c, r, s) for c, r, s, *_ in errors} == set(FAULTS)
    for config_id, run, stage, attempt, error, wall_ms in errors:
        assert attempt == 1 and FAULTS[(config_id, run, stage)][1] in error
        if "ReadTimeout" in error:
            assert 1.4 * 1000 <= wall_ms < 10 * 1000  # the read timeout from settings, not the 30 s stall
    ok = rows(wh, "SELECT config_id, run_number, stage, attempt FROM llm_calls"
                  " WHERE sweep_id = 's-faults' AND status = 'ok' ORDER BY ALL")
    assert len(ok) == 8
    assert all(a == (2 if (c, r, s) in FAULTS else 1) for c, r, s, a in ok)
    stat = rows(wh, "SELECT count(*), count(*) FILTER (status = 'ok'), min(throughput_tps) FROM stat_calls"
                    " WHERE sweep_id = 's-faults'")
    assert stat[0][:2] == (8, 8) and stat[0][2] > 0

    clean_summary = rows(wh, SUMMARY, ["s-clean"])
    fault_summary = rows(wh, SUMMARY, ["s-faults"])
    assert [r[0] for r in fault_summary] == [r[0] for r in clean_summary] == ["baseline_default", "temp0p5"]
    for c_row, f_row in zip(clean_summary, fault_summary):
        assert f_row[1] == c_row[1] == 4  # calls: the failed attempts are not counted
        assert f_row[8] == c_row[8] == 4 * 8  # total tokens: no partial stream counted
        for c_val, f_val in zip(c_row[2:8], f_row[2:8]):
            assert (c_val is None) == (f_val is None)
            assert f_val is None or (math.isfinite(f_val) and f_val >= 0)
        assert 0.5 < f_row[2] / c_row[2] < 2  # throughput of the same order as the clean sweep
        assert f_row[5] < 1000  # TTFT: a stalled or retried attempt never leaks into the mean
    assert no_duplicate_calls(wh)
