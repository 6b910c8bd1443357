"""End to end on the real embedded engine (llama.cpp + gemma3 270M): a small sweep in CI."""

from __future__ import annotations

import socket

import pytest

from tr111.warehouse import open_read_only

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

MATRIX = """
model: gemma3:270m
runs: 2
baseline: false
grid:
  num_ctx: [1024]
  temperature: [0.6]
options: {num_predict: 8}
restart: per_config
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_quick_sweep_on_the_embedded_engine(tmp_path, monkeypatch, small_corpus):
    from tr111.flows.sweep import tr111_sweep

    # Nothing listens at OLLAMA_HOST: engine "auto" must start the embedded engine.
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{_free_port()}")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    result = tr111_sweep(matrix=str(matrix), corpus=str(small_corpus),
                         warehouse=str(tmp_path / "wh.duckdb"), out=str(tmp_path / "reports"))
    assert result["status"] == "completed", result
    with open_read_only(tmp_path / "wh.duckdb") as con:
        engine, version, model_file = con.execute(
            "SELECT engine, server_version, engine_model_file FROM sweeps").fetchone()
        assert engine == "embedded" and "tr111" in version and model_file.endswith(".gguf")
        runs = con.execute("SELECT run_number, restart_strategy, restart_ms, cold FROM runs"
                           " ORDER BY run_number").fetchall()
        # Run 1 really restarted the engine process; run 2 reused it warm.
        assert runs[0][1] == "embedded" and runs[0][2] > 0 and runs[0][3] is True
        assert runs[1][2] == 0 and runs[1][3] is False
        calls = con.execute("SELECT stage, eval_count, eval_duration_ms, prompt_eval_count,"
                            " prompt_eval_duration_ms, total_duration_ms, throughput_tps, ttft_ms,"
                            " wall_ms, done_reason, response FROM llm_calls WHERE status = 'ok'").fetchall()
        assert len(calls) == 4
        for stage, n, eval_ms, p_n, p_ms, total, tps, ttft, wall, reason, text in calls:
            assert n == 8 and reason == "length" and text
            assert eval_ms > 0 and p_n > 50 and p_ms > 0 and total >= eval_ms + p_ms
            assert tps == pytest.approx(n / (eval_ms / 1000))
            assert 0 < ttft < wall
        ctx = con.execute("SELECT context_length FROM configs").fetchone()[0]
        assert ctx == 1024
