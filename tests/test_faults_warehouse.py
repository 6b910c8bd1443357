"""Fault matrix, warehouse side (docs/reliability.md): other processes read the warehouse
(``tr111 query``, the ``duckdb`` CLI) while a sweep writes it; a writer that meets a lock waits.

The readers stay subprocesses (DuckDB's file lock is per process: in-process they would share
the sweep's database instance); the sweep itself runs in-process under ``prefect_harness``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from faults_support import REPO, one, rows, run_sweep, sweep_paths, write_matrix
from tr111.errors import TransientError
from tr111.fake_ollama.server import FakeOllama, FakeTimings
from tr111.warehouse import connect, writer

DUCKDB_CLI = shutil.which("duckdb")
LOCK_MESSAGES = ("Could not set lock", "Conflicting lock")

MATRIX = """
model: gemma3:latest
runs: 6
baseline: true
options: {num_predict: 8}
restart: never
"""


def _hold_read_lock(path, seconds: float | None = None) -> subprocess.Popen:
    """Another process with a read-only connection open (what `duckdb -readonly` holds),
    for ``seconds`` or, when None, until a line arrives on its stdin."""
    code = ("import duckdb, sys, time\n"
            "while True:\n"
            "    try:\n"
            "        con = duckdb.connect(sys.argv[1], read_only=True); break\n"
            "    except duckdb.Error:\n"
            "        time.sleep(0.01)\n"
            "print('held', flush=True)\n"
            "time.sleep(float(sys.argv[2])) if sys.argv[2] != 'stdin' else sys.stdin.readline()\n"
            "con.close()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), "stdin" if seconds is None else str(seconds)],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _new_warehouse(tmp_path):
    path = tmp_path / "wh.duckdb"
    writer.start_sweep(path, {"sweep_id": "s", "status": "running", "model": "m"}, [])
    return path


def test_a_writer_that_meets_a_reader_lock_waits_and_then_writes(tmp_path):
    path = _new_warehouse(tmp_path)
    holder = _hold_read_lock(path, 1.0)
    t0 = time.monotonic()
    writer.finish_sweep(path, "s", "completed")  # blocked by the reader, retried until it lets go
    waited = time.monotonic() - t0
    holder.wait(10)
    assert waited >= 0.5
    assert one(path, "SELECT status FROM sweeps")[0] == "completed"


def test_a_writer_locked_out_past_its_timeout_raises_a_transient_error(tmp_path):
    """Transient, so the record task's retry condition retries it instead of failing the run."""
    path = _new_warehouse(tmp_path)
    holder = _hold_read_lock(path, 2.0)
    try:
        with pytest.raises(TransientError, match="stayed locked"):
            with connect(path, timeout_s=0.3):
                pass
    finally:
        holder.wait(10)


def test_a_writer_waits_for_a_read_only_connection_of_its_own_process(tmp_path):
    """In one process DuckDB refuses a writable connection while a read-only one is open
    (e.g. a report being rendered): that is waited out like a lock, not a config error."""
    from tr111.warehouse import open_read_only

    path = _new_warehouse(tmp_path)
    with open_read_only(path) as con:
        threading.Timer(0.5, con.close).start()
        t0 = time.monotonic()
        writer.finish_sweep(path, "s", "completed")
        assert time.monotonic() - t0 >= 0.3
    assert one(path, "SELECT status FROM sweeps")[0] == "completed"


@pytest.mark.skipif(DUCKDB_CLI is None, reason="the duckdb CLI (pip package duckdb-cli, dev extra) is not installed")
def test_the_duckdb_cli_reads_a_warehouse_tr111_created(tmp_path):
    """New warehouses are written in a storage format the duckdb CLI (1.x) can open."""
    path = _new_warehouse(tmp_path)
    done = subprocess.run([DUCKDB_CLI, "-readonly", "-csv", str(path), "-c",
                           "SELECT sweep_id, status FROM sweeps"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sweep_id,status", "s,running"]


def _loop(argv: list[str], stop: threading.Event, ready, results: list, pause: float) -> None:
    while not ready() and not stop.is_set():
        time.sleep(0.01)
    while not stop.is_set():
        results.append(subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=str(REPO)))
        time.sleep(pause)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_readers_throughout_a_sweep_and_a_writer_that_meets_their_lock(tmp_path, small_corpus, monkeypatch):
    import tr111.warehouse.connection as connection

    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.01")
    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")
    met = []
    is_lock_error = connection._is_lock_error
    monkeypatch.setattr(connection, "_is_lock_error", lambda exc: met.append(str(exc)) or is_lock_error(exc))
    paths = sweep_paths(tmp_path, small_corpus)
    wh = paths["warehouse"]

    def ready():  # readers start once the sweep has created the warehouse (no connection here)
        return os.path.exists(wh)

    stop = threading.Event()
    query_results: list = []
    cli_results: list = []
    holds: list = []
    readers = [threading.Thread(target=_loop, daemon=True, args=(
        [sys.executable, "-m", "tr111.cli", "query", "SELECT count(*) AS n FROM llm_calls", "--warehouse", wh],
        stop, ready, query_results, 0.05))]
    if DUCKDB_CLI:
        readers.append(threading.Thread(target=_loop, daemon=True, args=(
            [DUCKDB_CLI, "-readonly", "-csv", wh, "-c", "SELECT count(*) AS n FROM runs"],
            stop, ready, cli_results, 0.05)))
    else:  # fallback: a read-only connection from another Python process
        readers.append(threading.Thread(target=_loop, daemon=True, args=(
            [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True);"
             " print(c.execute('SELECT count(*) FROM runs').fetchall())", wh],
            stop, ready, cli_results, 0.05)))

    def hold_once():  # a reader keeps the file open until the writer has met its lock
        while not ready() and not stop.is_set():
            time.sleep(0.01)
        time.sleep(0.3)
        if stop.is_set():
            return
        count = len(met)
        proc = _hold_read_lock(wh)
        holds.append(proc)
        deadline = time.monotonic() + 60
        while len(met) == count and not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the writer keeps retrying meanwhile
        proc.stdin.write("release\n")
        proc.stdin.flush()
    readers.append(threading.Thread(target=hold_once, daemon=True))
    for thread in readers:
        thread.start()
    fake = FakeOllama(FakeTimings(load_ms=5, token_ms=10, tokens=8)).start()
    try:
        result = run_sweep(fake.url, write_matrix(tmp_path, MATRIX), paths, sweep_id="s-readers")
    finally:
        stop.set()
        for thread in readers:
            thread.join(120)
        for proc in holds:
            proc.wait(10)
        fake.stop()

    assert result["status"] == "completed"
    assert rows(wh, "SELECT count(*), count(*) FILTER (status = 'ok') FROM runs") == [(6, 6)]
    assert holds and any(is_lock_error(Exception(m)) for m in met), "the writer never met a reader's lock"

    assert len(query_results) >= 2
    for done in query_results:  # tr111 query waits out the writer's short transactions
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    ok = [d for d in cli_results if d.returncode == 0]
    print(f"readers: tr111 query {len(query_results)} runs; duckdb CLI {len(cli_results)} runs,"
          f" {len(cli_results) - len(ok)} met a lock; writer met {len(met)} lock/conflict errors")
    failed = [d for d in cli_results if d.returncode != 0]
    assert len(ok) >= 3 and len(ok) >= len(failed)
    for done in failed:  # the duckdb CLI does not retry: it may land inside a write, nothing worse
        assert any(m in done.stderr for m in LOCK_MESSAGES), done.stderr
