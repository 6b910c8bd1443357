"""Measurement hygiene and security defaults (docs/reliability.md): warm-up, cache busting,
truncation, timeouts from settings, loopback binds, argv-only commands, safe ids, a read-only
query command, and model output treated as data."""

from __future__ import annotations

import inspect
import json
import re
import socket
import sys
import time
from pathlib import Path

import pytest

from faults_support import REPO, at, cli, one, rows, run_sweep, stderr_lines, sweep_paths, write_matrix
from tr111.errors import ConfigError, ServerUnavailableError
from tr111.fake_ollama.server import FakeOllama, FakeTimings


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.01")
    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")


@pytest.fixture
def fake():
    with FakeOllama(FakeTimings(load_ms=5, token_ms=1, tokens=8)) as server:
        yield server


# --- measurement hygiene -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def warm_sweep(prefect_harness, tmp_path_factory, small_corpus):
    """One sweep with a warm-up call per run, over a context too small for the prompt and a large one."""
    tmp_path = tmp_path_factory.mktemp("warm")
    with pytest.MonkeyPatch.context() as mp, FakeOllama(FakeTimings(load_ms=5, token_ms=1, tokens=8)) as fake:
        mp.setenv("TR111_RETRY_BACKOFF_S", "0.01")
        mp.setenv("TR111_GPU_TELEMETRY", "false")
        matrix = write_matrix(tmp_path, "model: gemma3:latest\nruns: 2\nbaseline: false\nwarmup: true\n"
                                        "grid:\n  num_ctx: [32, 8192]\noptions: {num_predict: 6}\nrestart: never\n")
        paths = sweep_paths(tmp_path, small_corpus)
        result = run_sweep(fake.url, matrix, paths, sweep_id="s-warm")
        generate = [r["body"] for r in fake.requests if r["path"] == "/api/generate"]
    assert result["status"] == "completed"
    return paths["warehouse"], generate


def test_warmup_is_recorded_and_kept_out_of_the_statistics(warm_sweep):
    wh, generate = warm_sweep
    assert one(wh, "SELECT warmup FROM sweeps")[0] is True
    warm = rows(wh, "SELECT config_id, run_number, status, options_json FROM llm_calls"
                    " WHERE stage = 'warmup' ORDER BY 1, 2")
    assert [(c, r, s) for c, r, s, _ in warm] == [("ctx32", 1, "ok"), ("ctx32", 2, "ok"),
                                                  ("ctx8192", 1, "ok"), ("ctx8192", 2, "ok")]
    assert all(json.loads(o)["num_predict"] == 1 for *_, o in warm)
    assert one(wh, "SELECT count(*) FROM runs WHERE warmup_ms > 0")[0] == 4
    # Each run: warm-up first (one token), then analysis and report.
    assert [b["options"]["num_predict"] == 1 for b in generate] == [True, False, False] * 4
    # Statistics see only analysis and report.
    assert rows(wh, "SELECT config_id, calls FROM config_summary ORDER BY 1") == [("ctx32", 4), ("ctx8192", 4)]
    assert one(wh, "SELECT count(*) FROM stat_calls WHERE stage = 'warmup'")[0] == 0
    assert one(wh, "SELECT sum(eval_count) FROM stat_calls")[0] == \
        one(wh, "SELECT sum(total_tokens) FROM config_summary")[0]


def test_warmup_prompt_shares_no_prefix_with_the_measured_calls(warm_sweep):
    from tr111.run.stages import WARMUP_PROMPT

    wh, generate = warm_sweep
    prompts = rows(wh, "SELECT config_id, run_number, stage, prompt FROM llm_calls ORDER BY ALL")
    warm = {(c, r): p for c, r, s, p in prompts if s == "warmup"}
    assert set(warm.values()) == {WARMUP_PROMPT}
    for config_id, run_number, stage, prompt in prompts:
        if stage != "warmup":  # not even the first line (Ollama reuses a cached prompt prefix)
            assert prompt.splitlines()[0] != warm[(config_id, run_number)].splitlines()[0]


def test_truncation_is_flagged_on_the_row(warm_sweep):
    """The fake, like Ollama, keeps only num_ctx tokens of a longer prompt."""
    wh, _ = warm_sweep
    flags = rows(wh, "SELECT config_id, stage, truncated, truncation_reason, prompt_chars, num_ctx"
                     " FROM llm_calls WHERE stage <> 'warmup' ORDER BY 1, 2")
    assert len(flags) == 8
    for config_id, stage, truncated, reason, prompt_chars, num_ctx in flags:
        if config_id == "ctx32":
            assert truncated is True and reason.startswith("prompt_eval_count 32 >= num_ctx 32"), reason
            assert num_ctx == 32 and prompt_chars > 4 * 32
        else:
            assert truncated is False and reason is None and num_ctx == 8192


@pytest.mark.usefixtures("prefect_harness", "env")
def test_cache_bust_off_sends_identical_prompts_and_is_recorded(tmp_path, fake, small_corpus):
    """(cache_bust on, the default: every run's first line differs — tests/test_flows.py.)"""
    matrix = write_matrix(tmp_path, "model: gemma3:latest\nruns: 2\nbaseline: true\ncache_bust: false\n"
                                    "grid:\n  num_ctx: [8192]\noptions: {num_predict: 6}\nrestart: never\n")
    paths = sweep_paths(tmp_path, small_corpus)
    assert run_sweep(fake.url, matrix, paths, sweep_id="s-nobust")["status"] == "completed"
    wh = paths["warehouse"]
    cache_bust, matrix_json = one(wh, "SELECT cache_bust, matrix_json FROM sweeps")
    assert cache_bust is False and json.loads(matrix_json)["cache_bust"] is False
    for stage in ("analysis", "report"):
        prompts = rows(wh, "SELECT DISTINCT prompt FROM llm_calls WHERE stage = ?", [stage])
        assert len(prompts) == 1 and "Session " not in prompts[0][0] and "s-nobust" not in prompts[0][0]
    assert one(wh, "SELECT count(*) FROM llm_calls WHERE status = 'ok'")[0] == 8


@pytest.mark.usefixtures("prefect_harness", "env")
def test_whole_call_and_connect_timeouts_come_from_settings(tmp_path, fake, small_corpus, monkeypatch):
    """A server that sits on the request (slow first token) or stalls mid-stream is cut at the
    whole-call deadline, read timeout or not; the retry then succeeds."""
    from tr111 import progress

    servers: list[dict] = []
    unsubscribe = progress.subscribe(lambda event, data: servers.append(data) if event == "server" else None)
    monkeypatch.setenv("TR111_CALL_TIMEOUT_S", "1")
    monkeypatch.setenv("TR111_READ_TIMEOUT_S", "30")
    monkeypatch.setenv("TR111_CONNECT_TIMEOUT_S", "0.7")
    fake.inject_when(at("baseline_default", 1, "analysis"), "slow_first:6000")
    fake.inject_when(at("baseline_default", 1, "report"), "stall:6")
    paths = sweep_paths(tmp_path, small_corpus)
    matrix = write_matrix(tmp_path, "model: gemma3:latest\nruns: 1\nbaseline: true\n"
                                    "options: {num_predict: 6}\nrestart: never\n")
    t0 = time.monotonic()
    try:
        assert run_sweep(fake.url, matrix, paths, sweep_id="s-deadline")["status"] == "completed"
    finally:
        unsubscribe()
    assert time.monotonic() - t0 < 60
    errors = rows(paths["warehouse"], "SELECT stage, error, wall_ms FROM llm_calls WHERE status = 'error'"
                                      " ORDER BY stage")
    assert [e[0] for e in errors] == ["analysis", "report"]
    for _stage, error, wall_ms in errors:
        assert "call exceeded its 1 s deadline" in error
        assert 900 <= wall_ms < 3000  # not the 6 s the server wanted, nor the 30 s read timeout
    # the timed client the sweep context opened, as it applies its timeouts
    assert [s["timeouts"] for s in servers] == [{"connect_s": 0.7, "read_s": 30.0, "call_s": 1.0}]


@pytest.mark.parametrize("fault", ["slow_first:5000", "stall:5", "trickle"])
def test_whole_call_deadline_holds_whatever_the_server_does(fake, fault):
    """Slow first token (headers late), a stall mid-stream, tokens trickling in: all cut at 0.6 s."""
    from tr111.errors import TransientError
    from tr111.ollama.client import OllamaClient

    if fault == "trickle":
        fake.timings.token_ms = 200  # 8 tokens: a 1.6 s stream, a line every 0.2 s
    else:
        fake.inject(fault)
    with OllamaClient(fake.url, read_timeout_s=30, call_timeout_s=0.6) as client:
        t0 = time.monotonic()
        with pytest.raises(TransientError, match=r"call exceeded its 0\.6 s deadline") as caught:
            client.generate("gemma3", "hello there")
        elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 1.5
    assert caught.value.partial.status == "error" and 550 <= caught.value.partial.wall_ms < 1500


def test_the_deadline_watchdog_never_cuts_a_call_that_finished_in_time(fake):
    from tr111.ollama.client import OllamaClient

    with OllamaClient(fake.url, call_timeout_s=0.3) as client:
        for _ in range(20):
            assert client.generate("gemma3", "hi").status == "ok"
        time.sleep(0.5)  # every deadline armed above has passed; pooled connections must be intact
        for _ in range(5):
            assert client.generate("gemma3", "hi").status == "ok"


@pytest.mark.usefixtures("prefect_harness", "env")
def test_connect_timeout_from_settings_applies_to_a_server_that_never_accepts(tmp_path, small_corpus,
                                                                              monkeypatch):
    """A listener whose accept queue is full drops SYNs: only the connect timeout ends the wait."""
    from tr111.flows.sweep import tr111_sweep

    monkeypatch.setenv("TR111_CONNECT_TIMEOUT_S", "0.5")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    backlog = []
    try:
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            backlog.append(sock)
        time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="no Ollama answers"):
            tr111_sweep(matrix=write_matrix(tmp_path, "model: m\nruns: 1\n"), ollama_url=f"http://127.0.0.1:{port}",
                        **sweep_paths(tmp_path, small_corpus), report=False)
        assert time.monotonic() - t0 < 4  # the default connect timeout is 5 s
    finally:
        for sock in backlog:
            sock.close()
        listener.close()
    assert not (tmp_path / "wh.duckdb").exists()


# --- security defaults -------------------------------------------------------------------------

def test_servers_bind_loopback_unless_told_otherwise(fake):
    from tr111.engine.cli import build_parser as engine_parser
    from tr111.engine.launcher import EmbeddedEngine, find_free_port

    assert fake._server.server_address[0] == "127.0.0.1"
    assert inspect.signature(FakeOllama).parameters["host"].default == "127.0.0.1"
    assert engine_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert inspect.signature(EmbeddedEngine).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(find_free_port).parameters["host"].default == "127.0.0.1"
    from tr111.settings import Settings

    assert Settings.build().ollama_url == "http://127.0.0.1:11434"


def test_no_shell_anywhere_in_the_code():
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|\beval\(|\bexec\(")
    offenders = [f"{path.relative_to(REPO)}:{n}" for folder in ("tr111", "flows", "tasks", "warehouse")
                 for path in sorted((REPO / folder).rglob("*.py"))
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []


def test_restart_command_is_an_argv_passed_verbatim(tmp_path, fake, monkeypatch):
    from tr111.ollama.client import OllamaClient
    from tr111.run.restart import restart_server

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "argv.json"
    hostile = "$(touch pwned1); `touch pwned2` | touch pwned3 > x && touch pwned4"
    argv = [sys.executable, "-c", "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))",
            str(out), hostile, "*"]
    with OllamaClient(fake.url) as client:
        outcome = restart_server("command", client, "gemma3", command=argv, timeout_s=30)
    assert outcome.performed and outcome.strategy == "command"
    assert json.loads(out.read_text()) == [str(out), hostile, "*"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["argv.json"]
    with pytest.raises(ConfigError, match="restart command not found"):
        with OllamaClient(fake.url) as client:
            restart_server("command", client, "gemma3", command=["no-such-binary-tr111 --flag"], timeout_s=5)


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "/abs", "a\\b", "x\0y", "", ".hidden", "-flag",
                                 "a" * 129, "ok..no", "semi;colon", "new\nline", "sp ace"])
def test_ids_that_could_escape_the_output_folder_are_rejected(bad):
    from tr111.matrix import validate_id

    with pytest.raises(ConfigError, match="invalid sweep id"):
        validate_id(bad, "sweep id")


@pytest.mark.usefixtures("prefect_harness", "env")
def test_a_traversal_sweep_id_is_rejected_before_any_file_is_written(tmp_path, fake, small_corpus):
    from tr111.flows.sweep import tr111_sweep

    paths = {"warehouse": str(tmp_path / "w" / "wh.duckdb"), "out": str(tmp_path / "out" / "reports"),
             "corpus": str(small_corpus)}
    with pytest.raises(ConfigError, match="invalid sweep id"):
        tr111_sweep(matrix=write_matrix(tmp_path, "model: gemma3\nruns: 1\n"), ollama_url=fake.url,
                    sweep_id="../../escape", **paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]
    assert fake.requests == []


def test_report_writer_refuses_a_path_outside_the_output_folder(tmp_path):
    from tr111.report.render import _inside

    _inside(tmp_path, tmp_path / "s1" / "cfg")
    with pytest.raises(ValueError, match="outside"):
        _inside(tmp_path / "reports", tmp_path / "reports" / ".." / "elsewhere")


def _warehouse_with_a_sweep(tmp_path) -> Path:
    from tr111.warehouse import writer

    path = tmp_path / "wh.duckdb"
    writer.start_sweep(path, {"sweep_id": "s1", "status": "completed", "model": "m"}, [])
    return path


@pytest.mark.parametrize("sql, says", [
    ("DELETE FROM sweeps", "read-only mode"),
    ("UPDATE sweeps SET status = 'x'", "read-only mode"),
    ("DROP TABLE runs", "read-only mode"),
    ("CREATE TABLE t (a INT)", "read-only mode"),
    ("COPY (SELECT 1) TO 'leak.csv'", "file system operations are disabled"),
    ("SELECT * FROM read_csv('/etc/hostname')", "file system operations are disabled"),
    ("ATTACH 'other.duckdb' AS o", "file system operations are disabled"),
    ("SET enable_external_access = true", "locked"),
])
def test_tr111_query_cannot_write_anything(tmp_path, sql, says):
    warehouse = _warehouse_with_a_sweep(tmp_path)
    done = cli("query", sql, "--warehouse", str(warehouse), cwd=tmp_path)
    assert done.returncode == 2
    lines = stderr_lines(done)
    assert len(lines) == 1 and lines[0].startswith("tr111: error: query failed:") and says in lines[0], lines
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wh.duckdb"]
    assert rows(warehouse, "SELECT sweep_id, status FROM sweeps") == [("s1", "completed")]


def test_tr111_query_reads(tmp_path):
    warehouse = _warehouse_with_a_sweep(tmp_path)
    done = cli("query", "SELECT sweep_id, status FROM sweeps", "--warehouse", str(warehouse))
    assert done.returncode == 0 and "s1" in done.stdout and "completed" in done.stdout
    missing = cli("query", "SELECT 1", "--warehouse", str(tmp_path / "none.duckdb"))
    assert missing.returncode == 2 and stderr_lines(missing) == [
        f"tr111: error: warehouse not found: {tmp_path / 'none.duckdb'}"]
    assert not (tmp_path / "none.duckdb").exists()  # a reader never creates the file


HOSTILE = "{{ 7*7 }} {% if true %}IF{% endif %} | pipes | <script>alert(1)</script> ${HOME} '); DROP TABLE runs; --"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "env")
def test_model_output_is_data_in_reports_and_sql(tmp_path, small_corpus):
    """Responses, error text from the server and a quote in the model name are stored and
    rendered verbatim (escaped in report tables), never evaluated as a template."""
    model = "o'brien:latest"
    with FakeOllama(FakeTimings(load_ms=5, token_ms=1, tokens=len(HOSTILE.split(" "))),
                    models=[model]) as fake:
        fake.response_text = HOSTILE
        fake.garbage_line = HOSTILE.encode()
        fake.inject_when(at("baseline_default", 1, "report"), "garbage")
        paths = sweep_paths(tmp_path, small_corpus)
        matrix = write_matrix(tmp_path, f'model: "{model}"\nruns: 1\nbaseline: true\nrestart: never\n')
        result = run_sweep(fake.url, matrix, paths, sweep_id="s-data", report=True)
    assert result["status"] == "completed"
    wh = paths["warehouse"]
    assert one(wh, "SELECT count(*) FROM runs")[0] == 1  # the DROP TABLE in the text did nothing
    assert one(wh, "SELECT model FROM sweeps")[0] == model
    responses = rows(wh, "SELECT stage, response FROM llm_calls WHERE status = 'ok' ORDER BY stage")
    assert all(r.startswith("{{ 7*7 }} {% if true %}IF{% endif %} | pipes |") for _, r in responses)
    error = one(wh, "SELECT error FROM llm_calls WHERE status = 'error'")[0]
    assert "malformed NDJSON line" in error and "{{ 7*7 }}" in error

    folder = Path(result["report"]).parent
    run_report = (folder / "baseline_default" / "reports" / "run1_attempt2.md").read_text(encoding="utf-8")
    assert HOSTILE in run_report  # the model's own report: verbatim, not rendered
    report = Path(result["report"]).read_text(encoding="utf-8")
    assert "{{ 7*7 }}" in report  # the failed attempt's error, shown as text
    line = next(l for l in report.splitlines() if "malformed NDJSON" in l)
    assert "\\| pipes \\|" in line and "<script>" not in line and "&lt;script>" in line
    for text in (report, run_report):  # no template ran over the text
        assert "{% if true %}IF{% endif %}" in text
        assert "49 IF" not in text and "49 {%" not in text and "}} IF |" not in text
    metrics = json.loads((folder / "baseline_default" / "metrics.json").read_text(encoding="utf-8"))
    assert any(c["response"] and c["response"].startswith("{{ 7*7 }}") for c in metrics["llm_calls"])
