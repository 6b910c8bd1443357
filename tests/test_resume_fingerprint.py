"""A resume means the same experiment (issue 11, item 2; docs/reliability.md): the same
--sweep-id with another model, grid, options, runs, baseline, restart policy, cache_bust or
warmup is refused before a server is touched or a row is written (one line, exit code 2);
the run-order keys (order, seed, interleave, quiet_host) may change."""

from __future__ import annotations

import json

import pytest

from faults_support import cli, one, rows, run_sweep, stderr_lines, sweep_paths, write_matrix
from tr111.errors import ConfigError
from tr111.fake_ollama.server import FakeOllama, FakeTimings
from tr111.matrix import parse_matrix
from tr111.run import plan as planning

BASE = "model: gemma3:latest\nruns: 1\nbaseline: true\ngrid:\n  num_ctx: [512]\noptions: {num_predict: 4}\nrestart: never\n"
ADVICE = "(rerun with the same matrix and model, or a new --sweep-id)"


def _matrix(text: str):
    import yaml

    return parse_matrix(yaml.safe_load(text))


# --- the fingerprint, without a sweep -------------------------------------------------------

RECORDED = json.loads(_matrix(BASE).to_json())


@pytest.mark.parametrize("text, says", [
    (BASE.replace("num_predict: 4", "num_predict: 8"), "options.num_predict 4 -> 8"),
    (BASE.replace("{num_predict: 4}", "{num_predict: 4, top_k: 5}"), "options.top_k (unset) -> 5"),
    (BASE.replace("[512]", "[512, 1024]"), "grid.num_ctx [512] -> [512, 1024]"),
    (BASE.replace("runs: 1", "runs: 2"), "runs 1 -> 2"),
    (BASE.replace("baseline: true", "baseline: false"), "baseline true -> false"),
    (BASE.replace("restart: never", "restart: per_run"), 'restart "never" -> "per_run"'),
    (BASE + "cache_bust: false\n", "cache_bust true -> false"),
    (BASE + "warmup: true\n", "warmup false -> true"),
])
def test_a_changed_experiment_key_is_named(text, says):
    refusal = planning.resume_refusal("s1", RECORDED, _matrix(text))
    assert refusal.startswith("sweep s1 was started with another experiment; this resume changes ")
    assert says in refusal and refusal.endswith(ADVICE) and "\n" not in refusal


def test_another_model_is_named_in_words():
    refusal = planning.resume_refusal("s1", RECORDED, _matrix(BASE.replace("gemma3:latest", "gemma3:270m")))
    assert refusal == f"sweep s1 was started with model gemma3:latest; this resume asks for gemma3:270m {ADVICE}"


@pytest.mark.parametrize("extra", ["order: grid\n", "seed: 7\n", "interleave: true\n", "quiet_host: true\n"])
def test_run_order_keys_may_change_on_resume(extra):
    assert planning.resume_refusal("s1", RECORDED, _matrix(BASE + extra)) is None


def test_grid_value_order_and_older_recorded_matrices_are_the_same_experiment():
    assert planning.resume_refusal("s1", json.loads(_matrix(BASE.replace("[512]", "[1024, 512]")).to_json()),
                                   _matrix(BASE.replace("[512]", "[512, 1024]"))) is None
    older = {k: v for k, v in RECORDED.items() if k not in ("cache_bust", "warmup")}  # not recorded then
    assert planning.resume_refusal("s1", older, _matrix(BASE)) is None


# --- through the sweep and the CLI ----------------------------------------------------------

def _snapshot(warehouse: str) -> tuple:
    return (rows(warehouse, "SELECT * FROM sweeps ORDER BY sweep_id"),
            rows(warehouse, "SELECT * FROM configs ORDER BY sweep_id, config_id"),
            one(warehouse, "SELECT count(*) FROM runs")[0], one(warehouse, "SELECT count(*) FROM llm_calls")[0])


@pytest.mark.usefixtures("prefect_harness")
def test_a_resume_of_another_experiment_is_refused_and_the_same_one_resumes(tmp_path, monkeypatch, small_corpus):
    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.01")
    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")
    paths = sweep_paths(tmp_path, small_corpus)
    matrix = write_matrix(tmp_path, BASE)
    with FakeOllama(FakeTimings(load_ms=5, token_ms=1, tokens=4)) as fake:
        assert run_sweep(fake.url, matrix, paths, sweep_id="s1")["status"] == "completed"
        wh = paths["warehouse"]
        before, calls = _snapshot(wh), fake.generate_calls

        # another --model, through the CLI: one line, exit 2, nothing written, no call made
        done = cli("sweep", "--matrix", matrix, "--model", "gemma3:270m", "--sweep-id", "s1",
                   "--ollama-url", fake.url, "--restart", "none", "--no-report",
                   *(f"--{k}={v}" for k, v in paths.items()))
        assert done.returncode == 2, (done.stdout[-500:], done.stderr[-2000:])
        assert stderr_lines(done) == [
            f"tr111: error: sweep s1 was started with model gemma3:latest; this resume asks for gemma3:270m {ADVICE}"]
        assert _snapshot(wh) == before and fake.generate_calls == calls

        # changed options (a Prefect deployment, no CLI): the option is named
        changed = write_matrix(tmp_path, BASE.replace("num_predict: 4", "num_predict: 8"), name="m2.yaml")
        with pytest.raises(ConfigError, match=r"this resume changes options\.num_predict 4 -> 8"):
            run_sweep(fake.url, changed, paths, sweep_id="s1")
        assert _snapshot(wh) == before and fake.generate_calls == calls

        # the same experiment (another run order is allowed) resumes: nothing left to run
        same = write_matrix(tmp_path, BASE + "order: shuffled\nseed: 3\n", name="m3.yaml")
        assert run_sweep(fake.url, same, paths, sweep_id="s1")["status"] == "completed"
        assert one(wh, "SELECT count(*) FROM runs")[0] == before[2]
        assert one(wh, "SELECT model FROM sweeps WHERE sweep_id = 's1'")[0] == "gemma3:latest"
