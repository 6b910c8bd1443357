"""``tr111 query`` is bounded (issue 11, item 8; docs/reliability.md): a timeout, a row cap with a
note, every statement's result, Ctrl-C as one line. In-process through faults_support.cli, on a
small real warehouse file; one test sends a real SIGINT to ``python -m tr111.cli``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from faults_support import REPO, cli, stderr_lines
from tr111.warehouse import connect

HEAVY = "SELECT sum(range % 7) FROM range(10000000000)"  # minutes of work without a timeout


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "wh.duckdb"
    with connect(path):
        pass  # created and migrated
    return str(path)


def _one_error_line(done, code: int, says: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    lines = stderr_lines(done)
    assert len(lines) == 1 and lines[0].startswith(("tr111: error: ", "tr111 query: error: ")) and says in lines[0], lines
    assert "Traceback" not in done.stderr


def test_a_heavy_query_is_cut_at_the_timeout_with_one_line_and_exit_1(warehouse):
    started = time.monotonic()
    done = cli("query", HEAVY, "--warehouse", warehouse, "--timeout", "1")
    took = time.monotonic() - started
    _one_error_line(done, 1, "query timed out after 1 s")
    assert took < 10, took
    assert done.stdout == ""


def test_the_row_cap_shows_n_rows_and_a_note(warehouse):
    started = time.monotonic()
    done = cli("query", "SELECT * FROM range(100000) AS t(n)", "--warehouse", warehouse, "--max-rows", "10")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    shown = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert [line.strip("│ ") for line in shown] == [str(n) for n in range(10)]
    assert "(first 10 rows shown; more were cut: --max-rows N to see more)" in done.stdout


def test_no_note_when_every_row_fits(warehouse):
    done = cli("query", "SELECT * FROM range(10)", "--warehouse", warehouse, "--max-rows", "10")
    assert done.returncode == 0 and "more were cut" not in done.stdout


def test_the_default_cap_keeps_a_million_rows_out_of_memory(warehouse):
    started = time.monotonic()
    done = cli("query", "SELECT * FROM range(100000000)", "--warehouse", warehouse)
    assert done.returncode == 0, done.stderr
    assert "(first 1000 rows shown; more were cut" in done.stdout
    assert time.monotonic() - started < 20


def test_every_statement_shows_its_result_in_order(warehouse):
    done = cli("query", "SELECT 1 AS first_col; SELECT 2 AS second_col", "--warehouse", warehouse)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[1] SELECT 1 AS first_col;" in out and "[2] SELECT 2 AS second_col" in out
    assert out.index("first_col") < out.index("second_col")


def test_a_bad_statement_among_several_is_one_line_and_exit_2_with_nothing_shown(warehouse):
    done = cli("query", "SELECT 1 AS a; SELECT no_such_column", "--warehouse", warehouse)
    _one_error_line(done, 2, "query failed: Binder Error")
    assert done.stdout == ""
    _one_error_line(cli("query", "SELEC 1", "--warehouse", warehouse), 2, "query failed: Parser Error")
    _one_error_line(cli("query", " ; ", "--warehouse", warehouse), 2, "no SQL statement given")


@pytest.mark.parametrize("flag, value, says", [("--timeout", "0", "--timeout"), ("--timeout", "soon", "--timeout"),
                                               ("--max-rows", "0", "--max-rows"), ("--max-rows", "x", "--max-rows")])
def test_bad_bounds_are_usage_errors(warehouse, flag, value, says):
    _one_error_line(cli("query", "SELECT 1", "--warehouse", warehouse, flag, value), 2, says)


def test_keyboard_interrupt_during_execution_is_one_line_and_exit_130(warehouse, monkeypatch):
    import tr111.cli.query as query

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(query, "_run", interrupted)
    done = cli("query", "SELECT 1", "--warehouse", warehouse)
    _one_error_line(done, 130, "query interrupted")


def test_sigint_stops_a_running_query_at_once(warehouse):
    """A real Ctrl-C: DuckDB does not look at signals while it executes, so tr111 must."""
    proc = subprocess.Popen([sys.executable, "-m", "tr111.cli", "query", HEAVY, "--warehouse", warehouse],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(3)  # started and executing
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert time.monotonic() - sent < 6
    assert [line for line in err.splitlines() if line.strip()] == ["tr111: error: query interrupted"]
