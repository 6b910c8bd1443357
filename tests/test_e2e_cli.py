"""End to end through the real CLI: sweep, kill -9, resume, report (``python -m tr111.cli`` in a
subprocess: it is killed), and a refused server at start (in-process)."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults_support import cli, cli_env, stderr_lines
from tr111.fake_ollama.server import FakeOllama, FakeTimings
from tr111.warehouse import open_read_only

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

MATRIX = """
model: gemma3:latest
runs: 2
baseline: true
grid:
  num_ctx: [512, 1024]
  temperature: [0.6, 0.8]
options: {num_predict: 10}
restart: per_config
"""


def _finished(warehouse: Path) -> dict:
    if not warehouse.exists():
        return {}
    try:
        with open_read_only(warehouse, timeout_s=5) as con:
            return {(c, r): t for c, r, t in con.execute(
                "SELECT config_id, run_number, started_at FROM runs WHERE status = 'ok'").fetchall()}
    except Exception:
        return {}


def test_sweep_kill9_resume_and_report(tmp_path, small_corpus):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    warehouse, out = tmp_path / "wh.duckdb", tmp_path / "reports"
    with FakeOllama(FakeTimings(load_ms=30, token_ms=15, tokens=10)) as fake:
        argv = [sys.executable, "-m", "tr111.cli", "sweep", "--matrix", str(matrix),
                "--ollama-url", fake.url, "--restart", "unload", "--corpus", str(small_corpus),
                "--warehouse", str(warehouse), "--out", str(out), "--sweep-id", "e2e-1"]
        proc = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while len(_finished(warehouse)) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-sweep, likely mid-call
        proc.wait(30)
        before = _finished(warehouse)
        assert 3 <= len(before) < 10, "the kill must land mid-sweep"

        done = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "sweep id: e2e-1" in done.stdout and "report:" in done.stdout

    after = _finished(warehouse)
    assert len(after) == 10
    for key, started in before.items():  # finished runs were not executed again
        assert after[key] == started
    with open_read_only(warehouse) as con:
        assert con.execute("SELECT status FROM sweeps").fetchone()[0] == "completed"
        dupes = con.execute("SELECT count(*) FROM (SELECT config_id, run_number, stage, attempt"
                            " FROM llm_calls GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
        assert dupes == 0
        ok_per_run = con.execute("SELECT count(*) FROM stat_calls GROUP BY config_id, run_number").fetchall()
        assert sorted(ok_per_run) == [(2,)] * 10
        # The attempt killed mid-call left no 'ok' row: every ok call belongs to its run's
        # final execution (docs/reliability.md, kill -9 row).
        assert con.execute("SELECT count(*) FROM llm_calls WHERE status = 'ok'").fetchone()[0] == 20
        assert con.execute("SELECT count(*) FROM llm_calls c JOIN runs r USING (sweep_id, config_id, run_number)"
                           " WHERE c.status = 'ok' AND (r.status <> 'ok' OR c.run_attempt <> r.run_attempt)"
                           ).fetchone()[0] == 0
        raw = con.execute("SELECT config_id, throughput_tps, ttft_ms, eval_count FROM stat_calls").fetchall()
        summary = {r[0]: r[1:] for r in con.execute(
            "SELECT config_id, calls, avg_throughput_tps, stddev_throughput_tps, cv_throughput_pct,"
            " avg_ttft_ms, stddev_ttft_ms, cv_ttft_pct, total_tokens FROM config_summary").fetchall()}
    assert len(summary) == 5
    for config_id, row in summary.items():
        tps = [r[1] for r in raw if r[0] == config_id]
        ttft = [r[2] for r in raw if r[0] == config_id]
        tokens = sum(r[3] for r in raw if r[0] == config_id)
        expected = (len(tps), statistics.mean(tps), statistics.stdev(tps),
                    statistics.stdev(tps) / statistics.mean(tps) * 100, statistics.mean(ttft),
                    statistics.stdev(ttft), statistics.stdev(ttft) / statistics.mean(ttft) * 100, tokens)
        assert row == pytest.approx(expected)

    with open_read_only(warehouse) as con:  # §4.2: mean TTFT per config and stage, warm calls only
        warm = {(c, s): v for c, s, v in con.execute(
            "SELECT config_id, stage, avg(ttft_ms) FROM stat_calls"
            " WHERE NOT coalesce(is_cold, false) GROUP BY config_id, stage").fetchall()}
    folder = out / "e2e-1"
    report = (folder / "technical_report.md").read_text()
    for config_id, row in summary.items():
        line = next(l for l in report.splitlines() if l.startswith(f"| `{config_id}` | {row[0]} |"))
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # §4.1 | config | calls | runs | truncated | total tokens | TR111 throughput | TR111 TTFT |
        assert cells[5] == f"{row[1]:,.2f}" and cells[6] == f"{row[4]:,.2f}"  # the study's figures
        for stage in ("analysis", "report"):
            if (config_id, stage) not in warm:
                continue
            line = next(l for l in report.splitlines() if l.startswith(f"| `{config_id}` | {stage} |"))
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            # §4.2 | config | stage | warm calls | prompt tokens | mean TTFT | ...
            assert cells[4] == f"{warm[config_id, stage]:,.2f}"  # warm TTFT per stage, as recorded
        metrics = json.loads((folder / config_id / "metrics.json").read_text())
        assert len([c for c in metrics["llm_calls"] if c["status"] == "ok"]) >= 4
        assert all(c["prompt"] and "response" in c for c in metrics["llm_calls"])
        assert len(list((folder / config_id / "reports").glob("run*.md"))) >= 2


def test_refused_connection_at_start_is_one_line_and_nonzero(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    warehouse = tmp_path / "wh.duckdb"
    done = cli("sweep", "--ollama-url", f"http://127.0.0.1:{port}", "--warehouse", str(warehouse))
    assert done.returncode == 1
    lines = stderr_lines(done)
    assert lines[-1].startswith("tr111: error: no Ollama answers at")
    assert "Traceback" not in done.stderr
    assert not warehouse.exists()  # no half-written sweep
