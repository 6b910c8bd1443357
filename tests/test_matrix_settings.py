"""Sweep matrix and settings validation: one clear ConfigError per problem."""

from __future__ import annotations

import pytest

from tr111.errors import ConfigError
from tr111.matrix import BASELINE_ID, expand, load_matrix, parse_matrix, validate_id
from tr111.settings import Settings, ollama_url_from_host

REPO_SWEEPS = __import__("pathlib").Path(__file__).resolve().parents[1] / "sweeps"


def test_tr111_matrix_is_the_reports_19_configs():
    matrix = load_matrix(REPO_SWEEPS / "tr111.yaml")
    configs = expand(matrix)
    ids = [c.config_id for c in configs]
    assert len(ids) == 19 and matrix.runs == 3 and matrix.model == "gemma3:latest"
    assert ids[0] == BASELINE_ID and configs[0].options == {}
    assert "gpu60_ctx256_temp0p6" in ids and "gpu120_ctx1024_temp0p8" in ids
    assert len(set(ids)) == 19
    gpu80 = next(c for c in configs if c.config_id == "gpu80_ctx512_temp0p8")
    assert gpu80.options == {"num_gpu": 80, "num_ctx": 512, "temperature": 0.8}


def test_quick_matrix_is_small():
    matrix = load_matrix(REPO_SWEEPS / "quick.yaml")
    assert len(expand(matrix)) <= 6 and matrix.runs == 2
    assert matrix.options["num_predict"] <= 64


def test_model_and_runs_overrides():
    matrix = load_matrix(REPO_SWEEPS / "tr111.yaml", model="gemma3:270m", runs=1)
    assert matrix.model == "gemma3:270m" and matrix.runs == 1


@pytest.mark.parametrize("raw, fragment", [
    ({"model": "m", "grid": {"num_gpu": [1]}, "colour": "red"}, "colour"),
    ({"model": "m", "grid": {"num_gpuu": [1]}}, "unknown Ollama option"),
    ({"model": "m", "grid": {"num_ctx": ["big"]}}, "must be a number"),
    ({"model": "m", "grid": {"num_ctx": [256.5]}}, "integer"),
    ({"model": "m", "grid": {}, "baseline": False}, "nothing to run"),
    ({"model": "m", "grid": {"num_ctx": []}}, "empty list"),
    ({"model": "m", "grid": {"num_ctx": [256, 256]}}, "repeats"),
    ({"model": "m", "grid": {"num_ctx": [-5]}}, "outside"),
    ({"model": "m", "grid": {"temperature": [1e9]}}, "outside"),
    ({"model": "m", "runs": 0}, "runs"),
    ({"model": "m", "runs": "three"}, "runs"),
    ({"model": "", "grid": {"num_ctx": [1]}}, "model"),
    ({"model": "m", "restart": "sometimes"}, "restart"),
    ({"model": "m", "grid": {"num_ctx": [256]}, "options": {"num_ctx": 512}}, "also swept"),
])
def test_invalid_matrices_are_one_line_errors(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_matrix(raw)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_duplicate_config_ids_rejected():
    # 0.5 and "0p5" format to the same id fragment.
    with pytest.raises(ConfigError, match="duplicate config ids"):
        parse_matrix({"model": "m", "grid": {"seed": [1, 1.0]}})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_matrix(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_matrix(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_matrix(scalar)


@pytest.mark.parametrize("value", ["../etc", "a/b", "", ".hidden", "x" * 200, "a b"])
def test_ids_that_would_escape_paths_are_rejected(value):
    with pytest.raises(ConfigError):
        validate_id(value)


@pytest.mark.parametrize("host, url", [
    (None, "http://127.0.0.1:11434"),
    ("localhost", "http://localhost:11434"),
    ("10.1.2.3:1234", "http://10.1.2.3:1234"),
    (":8080", "http://127.0.0.1:8080"),
    ("https://gpu.example", "https://gpu.example:443"),
    ("http://box:99/prefix", "http://box:99/prefix"),
    ("[::1]:11434", "http://[::1]:11434"),
])
def test_ollama_host_is_parsed_like_ollama(host, url):
    assert ollama_url_from_host(host) == url


def test_settings_honour_ollama_host_and_overrides(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:5555")
    assert Settings.build().ollama_url == "http://127.0.0.1:5555"
    assert Settings.build(ollama_url="http://127.0.0.1:7").ollama_url == "http://127.0.0.1:7"
    monkeypatch.setenv("TR111_RETRIES", "-1")
    with pytest.raises(ConfigError, match="retries"):
        Settings.build()


def test_settings_reject_unknown_fields_and_shell_strings():
    with pytest.raises(ConfigError):
        Settings.build(colour="red")
    with pytest.raises(ConfigError):
        Settings.build(restart_command="systemctl restart ollama")
    assert Settings.build(restart_command=["systemctl", "restart", "ollama"]).restart_command[0] == "systemctl"


def test_the_engine_s_own_variables_are_not_refused_as_typos(monkeypatch):
    """TR111_ENGINE_* are read by the engine process a sweep starts (tr111.engine.limits)."""
    from tr111 import settings as settings_module
    from tr111.engine import limits

    assert settings_module.ENGINE_ENV == {limits.WRITE_TIMEOUT_ENV, limits.IDLE_TIMEOUT_ENV,
                                          limits.MAX_BODY_ENV, limits.MEMORY_LIMIT_ENV}
    monkeypatch.setenv(limits.WRITE_TIMEOUT_ENV, "5")
    assert settings_module.Settings.build().engine == "auto"
    monkeypatch.setenv("TR111_ENGINE_WRITE_TIMEOUTS", "5")
    with pytest.raises(ConfigError, match="unknown setting TR111_ENGINE_WRITE_TIMEOUTS"):
        settings_module.Settings.build()
