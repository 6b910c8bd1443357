"""Pure functions of the engine: option parsing, names, stop sequences, truncation, GGUF header."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tr111.engine.api_models import VERSION, is_embedded_version, rfc3339, rfc3339_now
from tr111.engine.gguf import human_number, read_gguf
from tr111.engine.models import normalize_name, packaged_gemma_path, parse_model_spec
from tr111.engine.options import (
    DEFAULT_KEEP_ALIVE_NS,
    KEEP_ALIVE_FOREVER_NS,
    OptionError,
    RunnerOptions,
    parse_keep_alive,
    parse_options,
)
from tr111.engine.runner import StopMatcher, truncate_prompt
from tr111.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected_ns"),
    [
        (None, DEFAULT_KEEP_ALIVE_NS),
        (0, 0),
        ("0", 0),
        ("5m", 300_000_000_000),
        ("30s", 30_000_000_000),
        ("1h30m", 5_400_000_000_000),
        ("250ms", 250_000_000),
        (2.5, 2_500_000_000),
        (-1, KEEP_ALIVE_FOREVER_NS),
        ("-1m", KEEP_ALIVE_FOREVER_NS),
        ("-1", KEEP_ALIVE_FOREVER_NS),
    ],
)
def test_keep_alive_reads_like_ollama(raw, expected_ns):
    assert parse_keep_alive(raw) == expected_ns


@pytest.mark.parametrize("raw", ["soon", "5x", True, [1]])
def test_keep_alive_rejects_garbage(raw):
    with pytest.raises(OptionError):
        parse_keep_alive(raw)


def test_options_split_runner_from_sampling():
    defaults = RunnerOptions(n_threads=3)
    runner, sampling = parse_options(
        {"num_ctx": 1024, "num_thread": 2, "num_batch": 64, "num_gpu": 0, "temperature": 0,
         "top_k": 5, "seed": 42.0, "num_predict": 8, "stop": ["\n"], "not_an_option": 1},
        defaults,
    )
    assert runner == RunnerOptions(n_ctx=1024, n_gpu_layers=0, n_threads=2, n_batch=64)
    assert (sampling.temperature, sampling.top_k, sampling.seed, sampling.num_predict) == (0.0, 5, 42, 8)
    assert sampling.stop == ("\n",)


def test_options_defaults_follow_ollama():
    runner, sampling = parse_options(None, RunnerOptions(n_threads=2))
    assert runner.n_ctx == 2048 and runner.n_batch == 512 and runner.n_gpu_layers == -1
    assert sampling.num_predict == -1 and sampling.temperature == 0.8 and sampling.num_keep == 4


def test_sampling_options_never_change_runner_options():
    defaults = RunnerOptions(n_threads=2)
    runner, _ = parse_options({"temperature": 1.5, "top_p": 0.5, "repeat_penalty": 1.3}, defaults)
    assert runner == defaults


@pytest.mark.parametrize("options", [{"num_ctx": "big"}, {"temperature": "hot"}, {"stop": [1]}, [1, 2]])
def test_options_with_wrong_types_are_rejected(options):
    with pytest.raises(OptionError):
        parse_options(options, RunnerOptions())


@pytest.mark.parametrize(
    ("name", "normalized"),
    [("gemma3", "gemma3:latest"), ("gemma3:270m", "gemma3:270m"),
     ("registry.ollama.ai/library/gemma3:270m", "gemma3:270m"), ("me/model", "me/model:latest")],
)
def test_names_get_latest_tag(name, normalized):
    assert normalize_name(name) == normalized


def test_model_spec_needs_name_and_path():
    assert parse_model_spec("tiny=/x/y.gguf")[0] == "tiny"
    with pytest.raises(ConfigError):
        parse_model_spec("no-equals-sign")


def test_stop_matcher_holds_back_partial_stop():
    matcher = StopMatcher(("END",))
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D and more") == ("", True)


def test_stop_matcher_releases_false_alarm():
    matcher = StopMatcher(("END",))
    assert matcher.feed("a E") == ("a ", False)
    assert matcher.feed("x") == ("Ex", False)
    assert matcher.flush() == ""


def test_stop_matcher_without_stops_passes_through():
    assert StopMatcher(()).feed("anything") == ("anything", False)


def test_truncation_keeps_head_and_tail_like_ollama():
    tokens = list(range(1000))
    truncated = truncate_prompt(tokens, n_ctx=256, num_keep=4, adds_bos=True)
    limit = 256 - (256 - 5) // 2
    assert len(truncated) == limit
    assert truncated[:5] == [0, 1, 2, 3, 4]
    assert truncated[-1] == 999 and truncated[5] == 1000 - (limit - 5)


def test_short_prompt_is_not_truncated():
    tokens = list(range(100))
    assert truncate_prompt(tokens, n_ctx=2048, num_keep=4, adds_bos=True) is tokens


def test_human_number_matches_ollama_format():
    assert human_number(268_098_176) == "268.10M"
    assert human_number(7_000_000_000) == "7B"
    assert human_number(1_500_000_000) == "1.5B"


def test_timestamps_are_rfc3339_utc():
    stamp = rfc3339_now()
    assert stamp.endswith("Z")
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None and abs((datetime.now(UTC) - parsed).total_seconds()) < 5
    assert rfc3339(datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)) == "2024-01-02T03:04:05.6Z"


def test_version_marks_the_embedded_engine():
    assert is_embedded_version(VERSION)
    assert not is_embedded_version("0.6.2")


def test_gguf_header_of_bundled_model():
    path, _ = packaged_gemma_path()
    info = read_gguf(path)
    assert info.architecture == "gemma3"
    assert info.quantization_level == "Q4_K_M"
    assert info.parameter_size.endswith("M")
    assert info.model_info()["general.architecture"] == "gemma3"
    assert info.model_info()["tokenizer.ggml.tokens"] == []  # long arrays emptied, as non-verbose Ollama


def test_registry_rejects_files_that_are_not_gguf(tmp_path):
    from tr111.engine.models import ModelRegistry

    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("hello")
    with pytest.raises(ConfigError):
        ModelRegistry().add("notes", not_a_model)
    with pytest.raises(ConfigError):
        ModelRegistry().add("missing", tmp_path / "missing.gguf")
