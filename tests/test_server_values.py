"""Server values are validated, not trusted (issue 11, item 3): implausible final-chunk metrics
are an ImplausibleMetricsError (transient, an error row with the reason), never an ok row or a
crash; non-conforming /api/ps and /api/show fields become None with a warning."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from faults_support import at, rows, run_sweep, sweep_paths, write_matrix
from tr111.errors import ImplausibleMetricsError, TransientError, is_transient
from tr111.fake_ollama.faults import parse_fault
from tr111.fake_ollama.server import FakeOllama, FakeTimings
from tr111.ollama.client import OllamaClient, sanitize_show

MODEL = "gemma3:latest"
FINAL = {"model": MODEL, "response": "", "done": True, "done_reason": "stop",
         "total_duration": 40_000_000, "load_duration": 5_000_000, "prompt_eval_count": 3,
         "prompt_eval_duration": 2_000_000, "eval_count": 2, "eval_duration": 20_000_000}
TOKENS = [{"model": MODEL, "response": "Hello", "done": False},
          {"model": MODEL, "response": " world", "done": False}]


def _client(handler) -> OllamaClient:
    return OllamaClient("http://ollama.invalid", transport=httpx.MockTransport(handler))


def _stream(final: dict, *, pause_s: float = 0.0):
    """A generate answer: two token chunks, then ``final`` (``pause_s`` before it)."""
    def body():
        for chunk in TOKENS:
            yield json.dumps(chunk).encode() + b"\n"
        time.sleep(pause_s)
        yield json.dumps(final).encode() + b"\n"  # NaN / Infinity as Python's json writes them

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"content-type": "application/x-ndjson"})
    return handler


def _generate(final: dict, **kw):
    with _client(_stream(final, **kw)) as client:
        return client.generate(MODEL, "hi")


BAD = [  # (field, value): each must be refused, naming the field
    ("eval_duration", 1),               # 1 ns: 2e9 tok/s
    ("eval_duration", 0),
    ("eval_duration", -5_000_000),
    ("eval_duration", float("nan")),
    ("eval_duration", float("inf")),
    ("eval_count", 0),                  # two text chunks were streamed
    ("eval_count", "12"),
    ("eval_count", float("nan")),
    ("eval_count", 12.5),
    ("eval_count", True),
    ("prompt_eval_count", 2**40),
    ("prompt_eval_duration", 1),        # 3 tokens in 1 ns
    ("total_duration", float("-inf")),
    ("total_duration", 3_600 * 10**9),  # an hour, for a call the client saw take milliseconds
    ("load_duration", 39_000_000_000),  # longer than the client's wall clock
    ("done_reason", 7),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_implausible_final_chunk_is_a_transient_error_row_naming_the_field(field, value):
    with pytest.raises(ImplausibleMetricsError) as info:
        _generate({**FINAL, field: value})
    exc = info.value
    assert isinstance(exc, TransientError) and is_transient(exc)
    assert f"{field}=" in str(exc)
    partial = exc.partial
    assert partial.status == "error" and partial.error.startswith("ImplausibleMetricsError: ")
    assert f"{field}=" in partial.error
    assert partial.throughput_tps is None  # nothing the server claimed is kept
    assert partial.response == "Hello world" and partial.chunks == 3


def test_parts_longer_than_total_are_refused():
    with pytest.raises(ImplausibleMetricsError, match="eval_duration=.*exceeds total_duration"):
        _generate({**FINAL, "total_duration": 10_000_000})


def test_eval_duration_far_shorter_than_the_client_saw_is_refused():
    """The client saw ~400 ms between first token and final chunk; the server claims 1 ms."""
    with pytest.raises(ImplausibleMetricsError, match="eval_duration=1000000 is under 1%"):
        _generate({**FINAL, "eval_duration": 1_000_000, "total_duration": 300_000_000}, pause_s=0.4)


def test_plausible_chunks_pass():
    call = _generate(FINAL)
    assert call.status == "ok" and call.throughput_tps == pytest.approx(100.0)
    # the server's decode clock shorter than the client's (network, queueing): still accepted
    slow = _generate({**FINAL, "eval_duration": 150_000_000, "total_duration": 200_000_000}, pause_s=0.3)
    assert slow.status == "ok" and slow.throughput_tps == pytest.approx(2 / 0.15)
    # Ollama omits zero fields; null means absent; one token with no decode time is no rate
    sparse = _generate({"model": MODEL, "done": True, "eval_count": 1, "done_reason": None,
                        "prompt_eval_count": None})
    assert sparse.status == "ok" and sparse.throughput_tps is None


def _json_server(ps: object, show: dict):
    def handler(request: httpx.Request) -> httpx.Response:
        payload = {"models": ps} if request.url.path == "/api/ps" else show
        return httpx.Response(200, content=json.dumps(payload).encode(),  # NaN allowed
                              headers={"content-type": "application/json"})
    return handler


def test_bad_ps_and_show_fields_become_none_with_a_warning(caplog):
    entry = {"name": MODEL, "model": MODEL, "size": 5_000, "size_vram": "lots",
             "context_length": 2**40, "digest": 12, "details": {"family": "gemma3", "format": 3}}
    show = {"details": {"family": ["x"], "families": ["gemma3"], "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": "gemma3", "general.parameter_count": -1,
                           "gemma3.context_length": "big", "gemma3.rope.freq_base": float("nan")},
            "capabilities": "completion", "modified_at": "2025-01-01T00:00:00Z"}
    with caplog.at_level(logging.WARNING, logger="tr111.ollama.client"), \
            _client(_json_server([entry, "junk"], show)) as client:
        loaded = client.loaded(MODEL)
        shown = client.show(MODEL)
    assert loaded["size_vram"] is None and loaded["context_length"] is None and loaded["digest"] is None
    assert loaded["size"] == 5_000 and loaded["details"] == {"family": "gemma3", "format": None}
    assert shown["details"] == {"family": None, "families": ["gemma3"], "quantization_level": "Q4_K_M"}
    assert shown["model_info"] == {"general.architecture": "gemma3", "general.parameter_count": None,
                                   "gemma3.context_length": None, "gemma3.rope.freq_base": None}
    assert shown["capabilities"] is None and shown["modified_at"] == "2025-01-01T00:00:00Z"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per answer, naming every field
    assert "/api/ps" in warnings[0] and "size_vram='lots'" in warnings[0]
    assert "model_info.gemma3.context_length='big'" in warnings[1]


def test_ps_models_not_a_list_and_a_non_object_answer_do_not_crash(caplog):
    with caplog.at_level(logging.WARNING), _client(_json_server("lots", {})) as client:
        assert client.loaded(MODEL) is None
    assert "'models' is not a list" in caplog.text
    with _client(lambda request: httpx.Response(200, json=[1, 2])) as client, \
            pytest.raises(TransientError, match="not a JSON object"):
        client.show(MODEL)
    assert sanitize_show({"details": None}) == {"details": None}


def test_fake_bad_metrics_fault_parses_and_reaches_the_final_chunk():
    assert parse_fault("bad_metrics:eval_count=\"12\"").final_override() == ("eval_count", "12")
    for spec in ("bad_metrics", "bad_metrics:eval_count", "bad_metrics:eval_count=nope"):
        with pytest.raises(ValueError, match="FIELD=JSON"):
            parse_fault(spec)
    with FakeOllama(FakeTimings(load_ms=1, token_ms=0.5, tokens=4)) as fake, \
            OllamaClient(fake.url) as client:
        fake.inject("bad_metrics:eval_duration=NaN")
        with pytest.raises(ImplausibleMetricsError, match="eval_duration=nan is not finite"):
            client.generate(MODEL, "a b")
        assert client.generate(MODEL, "a b").status == "ok"


SWEEP = """
model: gemma3:latest
runs: 1
baseline: true
options: {num_predict: 8}
restart: never
"""


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_sweep_with_implausible_metrics_retries_and_keeps_the_error_rows(tmp_path, small_corpus,
                                                                         monkeypatch):
    monkeypatch.setenv("TR111_RETRY_BACKOFF_S", "0.01")
    monkeypatch.setenv("TR111_GPU_TELEMETRY", "false")
    paths = sweep_paths(tmp_path, small_corpus)
    with FakeOllama(FakeTimings(load_ms=5, token_ms=2, tokens=8)) as fake:
        fake.inject_when(at("baseline_default", 1, "analysis"), "bad_metrics:eval_duration=1")
        fake.inject_when(at("baseline_default", 1, "report"), "bad_metrics:prompt_eval_count=1099511627776")
        result = run_sweep(fake.url, write_matrix(tmp_path, SWEEP), paths, sweep_id="s-values")
        assert fake.pending_faults == []
    assert result["status"] == "completed"
    wh = paths["warehouse"]
    calls = rows(wh, "SELECT stage, attempt, status, error, throughput_tps FROM llm_calls"
                     " WHERE sweep_id = 's-values' ORDER BY stage, attempt")
    assert [(s, a, st) for s, a, st, *_ in calls] == [
        ("analysis", 1, "error"), ("analysis", 2, "ok"), ("report", 1, "error"), ("report", 2, "ok")]
    assert "ImplausibleMetricsError" in calls[0][3] and "eval_duration=1 " in calls[0][3]
    assert "prompt_eval_count=1099511627776" in calls[2][3]
    assert calls[0][4] is None and 0 < calls[1][4] < 1e6 and 0 < calls[3][4] < 1e6
    assert rows(wh, "SELECT status FROM runs WHERE sweep_id = 's-values'") == [("ok",)]
