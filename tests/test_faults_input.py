"""Fault matrix, bad input (docs/reliability.md): matrix files, settings and flags that are
wrong (one line, exit code 2, no traceback), and a corpus anyone can drop files into.

The CLI runs in-process (faults_support.cli) with tr111-sweep replaced by a stub that fails
the test: bad input must be refused before Prefect starts."""

from __future__ import annotations

import os

import pytest

from faults_support import (CliResult, cli, forbid_flows, one, rows, run_sweep, stderr_lines, sweep_paths,
                            write_matrix)
from tr111.fake_ollama.server import FakeOllama, FakeTimings

GOOD = "model: gemma3:latest\nruns: 1\ngrid:\n  num_ctx: [512]\n"

MATRIX_CASES = {  # name -> (matrix file text, or None for a missing file; expected text of the line)
    "missing_file": (None, "matrix file not found"),
    "not_yaml": ("model: [unclosed\n", "is not valid YAML"),
    "not_a_mapping": ("- model: gemma3\n", "must be a YAML mapping"),
    "empty_file": ("", "must be a YAML mapping"),
    "not_utf8": (b"model: gemma3\xff\xfe\n", "cannot read matrix file"),
    "unknown_key": (GOOD + "warmpu: true\n", "warmpu: Extra inputs are not permitted"),
    "unknown_option": ("model: m\ngrid:\n  num_gpus: [1]\n", "unknown Ollama option 'num_gpus'"),
    "wrong_type_runs": ("model: m\nruns: three\n", "runs: Input should be a valid integer"),
    "wrong_type_option": ("model: m\ngrid:\n  num_ctx: [big]\n", "num_ctx must be a number"),
    "wrong_type_grid": ("model: m\ngrid: [num_ctx]\n", "grid: Input should be a valid dictionary"),
    "empty_grid": ("model: m\nbaseline: false\ngrid: {}\n", "nothing to run"),
    "empty_grid_list": ("model: m\ngrid:\n  num_ctx: []\n", "grid.num_ctx is an empty list"),
    "duplicate_config_ids": ("model: m\ngrid:\n  num_ctx: [512, 512.0]\n", "duplicate config ids: ['ctx512']"),
    "negative_runs": ("model: m\nruns: -1\n", "runs: Input should be greater than or equal to 1"),
    "absurd_runs": ("model: m\nruns: 1000000000\n", "runs: Input should be less than or equal to 1000"),
    "negative_option": ("model: m\ngrid:\n  temperature: [-0.5]\n", "temperature=-0.5 is outside"),
    "absurd_option": ("model: m\ngrid:\n  num_ctx: [100000000]\n", "num_ctx=100000000 is outside"),
    "empty_model": ("model: ''\n", "model: String should have at least 1 character"),
    "bad_restart_policy": ("model: m\nrestart: sometimes\n", "restart: Input should be"),
}

ARG_CASES = {  # name -> (extra CLI args, environment, expected text of the line)
    "runs_flag_zero": (["--runs", "0"], {}, "runs: Input should be greater than or equal to 1"),
    "runs_flag_not_a_number": (["--runs", "abc"], {}, "argument --runs: invalid int value: 'abc'"),
    "unknown_flag": (["--num-gpu", "3"], {}, "unrecognized arguments: --num-gpu 3"),
    "bad_engine": (["--engine", "vllm"], {}, "argument --engine: invalid choice: 'vllm'"),
    "sweep_id_traversal": (["--sweep-id", "../../etc"], {}, "invalid sweep id '../../etc'"),
    "missing_corpus": (["--corpus", "/nonexistent/corpus"], {}, "corpus directory /nonexistent/corpus does not exist"),
    "setting_negative": ([], {"TR111_RETRIES": "-1"}, "invalid settings: retries: Input should be greater"),
    "setting_wrong_type": ([], {"TR111_READ_TIMEOUT_S": "soon"}, "invalid settings: read_timeout_s: Input should be a valid number"),
    "setting_zero_timeout": ([], {"TR111_CALL_TIMEOUT_S": "0"}, "invalid settings: call_timeout_s: Input should be greater than 0"),
    "setting_absurd": ([], {"TR111_RESTART_TIMEOUT_S": "1e9"}, "invalid settings: restart_timeout_s: Input should be less"),
    "setting_bad_bool": ([], {"TR111_GPU_TELEMETRY": "perhaps"}, "invalid settings: gpu_telemetry: Input should be a valid boolean"),
    "restart_command_not_json": ([], {"TR111_RESTART_COMMAND": "systemctl restart ollama"},
                                 "TR111_RESTART_COMMAND must be a JSON list of argv strings"),
    "restart_command_a_string": ([], {"TR111_RESTART_COMMAND": '"systemctl restart ollama"'},
                                 "invalid settings: restart_command: Input should be a valid list"),
    "restart_command_empty_arg": ([], {"TR111_RESTART_COMMAND": '["systemctl", ""]'},
                                  "restart_command must be a list of non-empty argv strings"),
    "restart_command_missing": (["--restart", "command"], {"TR111_RESTART_COMMAND": ""},
                                "--restart command needs TR111_RESTART_COMMAND"),
    "unknown_setting": ([], {"TR111_RETRYS": "5"}, "unknown setting TR111_RETRYS"),
}


def _assert_one_line_exit_2(done: CliResult, expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    lines = stderr_lines(done)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(("tr111: error: ", "tr111 sweep: error: ")) and expected in lines[0], lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.fixture(autouse=True)
def _no_flow(request, monkeypatch):
    if "prefect_harness" not in request.fixturenames:  # the sweeps below run the real flow
        forbid_flows(monkeypatch)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "a.csv").write_text("tokens_per_second\n1\n")
    return root


@pytest.mark.parametrize("case", sorted(MATRIX_CASES))
def test_bad_matrix_is_one_line_and_exit_2(case, tmp_path, tiny_corpus):
    text, expected = MATRIX_CASES[case]
    matrix = tmp_path / "m.yaml"
    if isinstance(text, bytes):
        matrix.write_bytes(text)
    elif text is not None:
        matrix.write_text(text)
    warehouse = tmp_path / "wh.duckdb"
    done = cli("sweep", "--matrix", str(matrix), "--corpus", str(tiny_corpus), "--warehouse", str(warehouse),
               "--out", str(tmp_path / "out"))
    _assert_one_line_exit_2(done, expected)
    assert not warehouse.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", sorted(ARG_CASES))
def test_bad_flags_and_settings_are_one_line_and_exit_2(case, tmp_path, tiny_corpus):
    args, env, expected = ARG_CASES[case]
    matrix = write_matrix(tmp_path, GOOD)
    if "--corpus" not in args:
        args = [*args, "--corpus", str(tiny_corpus)]
    warehouse = tmp_path / "wh.duckdb"
    environment = {k: v or None for k, v in env.items()}  # "": unset
    done = cli("sweep", "--matrix", matrix, "--warehouse", str(warehouse), "--out", str(tmp_path / "out"),
               *args, env=environment)
    _assert_one_line_exit_2(done, expected)
    assert not warehouse.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("setup", ["empty", "only_unusable_entries"])
def test_empty_corpus_is_one_line_and_exit_2_before_anything_runs(setup, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if setup == "only_unusable_entries":
        (corpus / "notes.txt").write_text("not a benchmark file")
        (corpus / "loop.csv").symlink_to("loop.csv")
        (corpus / ".hidden.csv").write_text("a\n1\n")
    warehouse = tmp_path / "wh.duckdb"
    done = cli("sweep", "--matrix", write_matrix(tmp_path, GOOD), "--corpus", str(corpus),
               "--warehouse", str(warehouse))
    _assert_one_line_exit_2(done, f"no CSV, JSON or Markdown files under {corpus}")
    assert not warehouse.exists()


# --- a corpus with every kind of bad file, through a sweep ------------------------------------

def _hostile_corpus(root):
    root.mkdir()
    (root / "good.csv").write_text("model,tokens_per_second,ttft_ms\ngemma3,100,500\ngemma3,120,700\n")
    (root / "good.json").write_text('{"metrics": {"tokens_per_second": 110, "ttft_ms": 600}}')
    (root / "good.md").write_text("# Run\n\n| tokens_per_second |\n|---|\n| 105 |\n")
    (root / "invalid.json").write_text('{"tokens_per_second": 1, ')
    (root / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n6,7,8,9\n")
    (root / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    (root / "latin1.md").write_bytes("# Résumé\n\ntokens_per_second: 99\n".encode("latin-1"))
    with (root / "huge.csv").open("wb") as handle:  # 200 MB, sparse: only the header and rows are data
        handle.write(b"tokens_per_second\n" + b"101\n" * 4000)  # past the 8 KiB binary probe
        handle.truncate(200 * 1024 * 1024)
    os.mkfifo(root / "pipe.csv")  # unreadable as a file (root ignores mode 000, a FIFO it cannot read)
    (root / "self.json").symlink_to("self.json")  # a symlink loop
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)  # a directory loop
    (root / "empty.csv").write_text("")
    return {"invalid.json": "invalid_json", "ragged.csv": "ragged_csv", "binary.csv": "binary",
            "latin1.md": "non_utf8", "huge.csv": "too_large", "pipe.csv": "unreadable",
            "self.json": "symlink_loop", "sub/up": "symlink_loop", "empty.csv": "empty_file"}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_hostile_corpus_is_ingested_with_every_problem_counted_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.01")
    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")
    corpus = tmp_path / "corpus"
    expected = _hostile_corpus(corpus)
    paths = sweep_paths(tmp_path, corpus)
    matrix = write_matrix(tmp_path, "model: gemma3:latest\nruns: 2\nbaseline: true\n"
                                    "options: {num_predict: 4}\nrestart: never\n")
    with FakeOllama(FakeTimings(load_ms=5, token_ms=1, tokens=6)) as fake:
        result = run_sweep(fake.url, matrix, paths, sweep_id="s-corpus", report=True)
    assert result["status"] == "completed"
    wh = paths["warehouse"]
    problems = rows(wh, "SELECT path, kind, detail FROM ingest_problems WHERE sweep_id = 's-corpus'")
    assert {(p, k) for p, k, _ in problems} == set(expected.items())  # each once, though ingested per run
    assert one(wh, "SELECT count(*) FROM runs WHERE status = 'ok'")[0] == 2
    prompt = one(wh, "SELECT prompt FROM llm_calls WHERE stage = 'analysis' LIMIT 1")[0]
    assert "tokens_per_second: n=" in prompt and "Ingest problems: 9" in prompt

    report = open(result["report"], encoding="utf-8").read()
    for path, kind in expected.items():
        assert any(f"`{path}`" in line and kind in line for line in report.splitlines()), (path, kind)


@pytest.mark.usefixtures("prefect_harness")
def test_empty_corpus_in_the_flow_fails_before_any_row_or_restart(tmp_path, monkeypatch):
    """The same check for a sweep started without the CLI (a Prefect deployment)."""
    from tr111.errors import EmptyCorpusError

    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    paths = sweep_paths(tmp_path, corpus)
    with FakeOllama(FakeTimings(load_ms=5, token_ms=1, tokens=4)) as fake:
        with pytest.raises(EmptyCorpusError, match="no CSV, JSON or Markdown files"):
            run_sweep(fake.url, write_matrix(tmp_path, GOOD), paths, restart="unload", sweep_id="s-empty")
        generate = fake.generate_calls
    assert generate == 0  # not even the restart's unload
    assert not os.path.exists(paths["warehouse"]) or rows(paths["warehouse"], "SELECT * FROM sweeps") == []
