"""Disk full, read-only paths and a corrupt warehouse (issue 11, row 7): one line naming the
cause and the path, found before the first call where it can be. Real file systems: a tmpfs
mounted small or read-only (root only; skipped where mounting is not allowed)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults_support import cli, cli_env, one, stderr_lines, write_matrix
from tr111.fake_ollama.server import FakeOllama, FakeTimings

MATRIX = """
model: gemma3:270m
runs: 2
baseline: true
grid:
  num_ctx: [1024, 2048]
options:
  num_predict: 8
order: grid
"""


@contextlib.contextmanager
def tmpfs(path: Path, *, size: str = "4m", read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _sweep(fake, tmp_path, corpus, *, warehouse: Path, out: Path, sweep_id: str = "io") -> object:
    return cli("sweep", "--matrix", write_matrix(tmp_path, MATRIX), "--ollama-url", fake.url,
               "--corpus", str(corpus), "--warehouse", str(warehouse), "--out", str(out),
               "--sweep-id", sweep_id)


@pytest.mark.usefixtures("prefect_harness")
def test_a_read_only_report_folder_is_found_before_the_first_call(tmp_path, small_corpus):
    """Before: found only after the whole sweep ran (a 48-line traceback)."""
    with tmpfs(tmp_path / "ro", read_only=True) as ro, FakeOllama(FakeTimings(tokens=4)) as fake:
        done = _sweep(fake, tmp_path, small_corpus, warehouse=tmp_path / "wh.duckdb", out=ro / "reports")
        calls = fake.generate_calls
    assert done.returncode == 1
    assert stderr_lines(done) == [f"tr111: error: read-only file system: cannot write {ro / 'reports'}"
                                  " (Read-only file system)"], done.stderr
    assert calls == 0
    assert not (tmp_path / "wh.duckdb").exists()  # nothing was started


@pytest.mark.usefixtures("prefect_harness")
def test_a_read_only_warehouse_folder_is_one_line_before_the_first_call(tmp_path, small_corpus):
    with tmpfs(tmp_path / "ro", read_only=True) as ro, FakeOllama(FakeTimings(tokens=4)) as fake:
        done = _sweep(fake, tmp_path, small_corpus, warehouse=ro / "wh.duckdb", out=tmp_path / "r")
        calls = fake.generate_calls
    lines = stderr_lines(done)
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines == [f"tr111: error: read-only file system: cannot write {ro} (Read-only file system)"]
    assert calls == 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_disk_too_full_to_start_is_refused_before_the_first_call(tmp_path, small_corpus):
    with tmpfs(tmp_path / "small", size="2m") as small, FakeOllama(FakeTimings(tokens=4)) as fake:
        done = _sweep(fake, tmp_path, small_corpus, warehouse=small / "wh.duckdb", out=tmp_path / "r")
        calls = fake.generate_calls
    lines = stderr_lines(done)
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"tr111: error: disk full: {small} has ") and "MiB free" in lines[0]
    assert calls == 0


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_disk_that_fills_mid_sweep_is_one_line_naming_the_cause(tmp_path, small_corpus):
    """Before: a 119-line traceback ending in 'cannot rollback - no transaction is active'."""
    with tmpfs(tmp_path / "disk", size="40m") as disk, \
            FakeOllama(FakeTimings(load_ms=10, token_ms=30, tokens=8)) as fake:
        wh = disk / "wh.duckdb"
        argv = [sys.executable, "-m", "tr111.cli", "sweep", "--matrix", write_matrix(tmp_path, MATRIX),
                "--ollama-url", fake.url, "--corpus", str(small_corpus), "--warehouse", str(wh),
                "--out", str(tmp_path / "r"), "--sweep-id", "fills", "--no-report"]
        proc = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 120
        while fake.generate_calls < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        with open(disk / "filler", "wb") as fh:  # another program fills the disk mid-sweep
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
        _, err = proc.communicate(timeout=180)
        recorded = one(wh, "SELECT count(*) FROM runs")[0] if wh.exists() else 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err and "cannot rollback" not in err, err[-3000:]
    assert lines[-1].startswith("tr111: error: disk full: ") and str(disk) in lines[-1], lines[-1]
    assert recorded < 6  # it really stopped mid-sweep


@pytest.mark.usefixtures("prefect_harness")
def test_a_corrupt_warehouse_is_one_line_for_sweep_report_and_query(tmp_path, small_corpus):
    wh = tmp_path / "wh.duckdb"
    from tr111.warehouse import connect

    with connect(wh) as con:
        con.execute("INSERT INTO sweeps (sweep_id, status) VALUES ('old', 'completed')")
    size = wh.stat().st_size
    with open(wh, "r+b") as fh:  # a damaged block, as a failing disk or a bad copy leaves it
        fh.seek(8192)
        fh.write(os.urandom(size - 8192))
    with FakeOllama(FakeTimings(tokens=4)) as fake:
        done = _sweep(fake, tmp_path, small_corpus, warehouse=wh, out=tmp_path / "r")
        calls = fake.generate_calls
    lines = stderr_lines(done)
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"tr111: error: corrupt file: warehouse {wh}: ")
    assert calls == 0
    for args in (["report", "--warehouse", str(wh), "--out", str(tmp_path / "r")],
                 ["query", "--warehouse", str(wh), "SELECT 1"],
                 ["sweeps", "--warehouse", str(wh)]):
        done = cli(*args)
        lines = stderr_lines(done)
        assert done.returncode in (1, 2) and len(lines) == 1, (args, done.stderr)
        assert "corrupt" in lines[0].lower() and str(wh) in lines[0], (args, lines[0])
