"""The Ollama client against a real HTTP fake server (stamps, parsing, error mapping), and
through httpx.MockTransport for the parsing and mapping that need no server at all."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tr111.errors import ModelNotFoundError, ServerUnavailableError, TerminalError, TransientError
from tr111.ollama.metrics import ServerMetrics
from tr111.ollama.client import OllamaClient
from tr111.fake_ollama.server import FakeOllama, FakeTimings

MODEL = "gemma3:latest"


def test_generate_measures_ttft_wall_and_server_metrics(fake_ollama):
    with OllamaClient(fake_ollama.url) as client:
        call = client.generate(MODEL, "one two three four", {"num_predict": 8})
    rec = [r for r in fake_ollama.requests if r["path"] == "/api/generate"][-1]
    assert call.status == "ok"
    assert call.server.eval_count == 8
    assert call.server.done_reason == "length"
    assert call.response and len(call.response.split()) == 8
    # First call loads the model: load_duration >= the fake's 20 ms load.
    assert call.server.load_duration_ms >= 20
    # Client TTFT cannot be shorter than the server's own time to its first chunk.
    server_first_ms = (rec["t_first_chunk_ns"] - rec["t_received_ns"]) / 1e6
    assert call.ttft_ms >= server_first_ms
    assert call.wall_ms >= call.server.total_duration_ms > 0
    assert call.ttft_ms < call.wall_ms
    # Throughput is the report's definition: eval_count / eval_duration.
    expected = call.server.eval_count / (call.server.eval_duration_ms / 1000)
    assert call.throughput_tps == pytest.approx(expected)


def test_second_call_is_warm_and_options_reload(fake_ollama):
    with OllamaClient(fake_ollama.url) as client:
        client.generate(MODEL, "a b", {"num_predict": 2})
        warm = client.generate(MODEL, "a b", {"num_predict": 2, "temperature": 0.1})
        reload = client.generate(MODEL, "a b", {"num_predict": 2, "num_ctx": 512})
        ps = client.loaded(MODEL)
    assert warm.server.load_duration_ms < 20
    assert reload.server.load_duration_ms >= 20
    assert ps is not None and ps["context_length"] == 512


def test_final_chunk_parsing_converts_ns_and_defaults_missing_to_zero():
    metrics = ServerMetrics.from_final_chunk({"done": True, "eval_count": 10,
                                              "eval_duration": 500_000_000,
                                              "total_duration": 2_000_000_000})
    assert metrics.eval_duration_ms == 500.0
    assert metrics.total_duration_ms == 2000.0
    assert metrics.load_duration_ms == 0.0 and metrics.prompt_eval_count == 0
    assert metrics.throughput_tps == pytest.approx(20.0)
    assert ServerMetrics.from_final_chunk({"done": True}).throughput_tps is None


def test_version_show_ps_unload(fake_ollama):
    with OllamaClient(fake_ollama.url) as client:
        assert client.version() == "0.12.0-fake"
        assert client.show(MODEL)["details"]["family"]
        client.generate(MODEL, "x", {"num_predict": 1})
        assert client.loaded(MODEL) is not None
        client.unload(MODEL)
        assert client.loaded(MODEL) is None


@pytest.mark.parametrize("fault, message", [
    ("http500", "HTTP 500"),
    ("http503", "HTTP 503"),
    ("drop:3", "stream"),
    ("garbage", "malformed NDJSON"),
    ("no_metrics", "no metrics"),
    ("error_chunk", "mid-stream"),
    ("refuse", "dropped"),
])
def test_transient_faults_raise_transient_with_partial(fake_ollama, fault, message):
    fake_ollama.inject(fault)
    with OllamaClient(fake_ollama.url) as client:
        with pytest.raises(TransientError, match=message) as info:
            client.generate(MODEL, "p q r", {"num_predict": 6})
        partial = info.value.partial
        assert partial.status == "error" and partial.error
        assert partial.wall_ms is not None
        if fault == "drop:3":
            assert partial.chunks == 3 and len(partial.response.split()) == 3
        # The server is fine afterwards: the next attempt succeeds.
        assert client.generate(MODEL, "p q r", {"num_predict": 2}).status == "ok"


def test_stall_hits_the_read_timeout():
    with FakeOllama(FakeTimings(load_ms=1, token_ms=1)) as fake:
        fake.inject("stall:5")
        with OllamaClient(fake.url, read_timeout_s=0.3) as client:
            with pytest.raises(TransientError, match="timed out"):
                client.generate(MODEL, "x", {"num_predict": 4})


def test_whole_call_deadline():
    with FakeOllama(FakeTimings(load_ms=1, token_ms=50, tokens=40)) as fake:
        with OllamaClient(fake.url, call_timeout_s=0.3) as client:
            with pytest.raises(TransientError, match="deadline"):
                client.generate(MODEL, "x")


def test_unknown_model_is_terminal(fake_ollama):
    with OllamaClient(fake_ollama.url) as client:
        with pytest.raises(ModelNotFoundError):
            client.generate("no-such-model:1b", "x")
        with pytest.raises(ModelNotFoundError):
            client.show("no-such-model:1b")


def test_bad_request_is_terminal_not_transient(fake_ollama):
    with OllamaClient(fake_ollama.url) as client:
        with pytest.raises(TerminalError):
            client._json("POST", "/api/generate", None)


def test_connection_refused_is_server_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with OllamaClient(f"http://127.0.0.1:{port}", connect_timeout_s=1) as client:
        with pytest.raises(ServerUnavailableError):
            client.version()


# --- without any server: httpx.MockTransport through the client's transport seam -----------

def _ndjson(*chunks: dict | str) -> bytes:
    return b"".join((c if isinstance(c, str) else json.dumps(c)).encode() + b"\n" for c in chunks)


FINAL = {"model": MODEL, "response": "", "done": True, "done_reason": "stop",
         "total_duration": 40_000_000, "load_duration": 5_000_000, "prompt_eval_count": 3,
         "prompt_eval_duration": 2_000_000, "eval_count": 2, "eval_duration": 20_000_000}


def _mock(handler) -> OllamaClient:
    return OllamaClient("http://ollama.invalid", transport=httpx.MockTransport(handler))


def test_streamed_generate_is_parsed_without_a_server():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, json.loads(request.content)))
        body = _ndjson({"model": MODEL, "response": "", "done": False},  # no text: not the TTFT
                       {"model": MODEL, "response": "Hello", "done": False}, "",
                       {"model": MODEL, "response": " world", "done": False}, FINAL)
        return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})

    with _mock(handler) as client:
        call = client.generate(MODEL, "hi", {"num_predict": 2}, keep_alive="5m")
    assert seen == [("POST", "/api/generate", {"model": MODEL, "prompt": "hi", "stream": True,
                                               "options": {"num_predict": 2}, "keep_alive": "5m"})]
    assert call.status == "ok" and call.response == "Hello world" and call.chunks == 4
    assert 0 <= call.ttft_ms <= call.wall_ms
    assert call.server.eval_count == 2 and call.server.eval_duration_ms == 20.0
    assert call.server.done_reason == "stop" and call.throughput_tps == pytest.approx(100.0)


@pytest.mark.parametrize("status, body, error, message", [
    (404, {"error": "model 'x' not found"}, ModelNotFoundError, "not found"),
    (500, {"error": "boom"}, TransientError, "HTTP 500: boom"),
    (503, "overloaded", TransientError, "HTTP 503: overloaded"),
    (400, {"error": "bad options"}, TerminalError, "HTTP 400: bad options"),
])
def test_http_errors_map_onto_tr111_errors_without_a_server(status, body, error, message):
    def handler(request: httpx.Request) -> httpx.Response:
        return (httpx.Response(status, json=body) if isinstance(body, dict)
                else httpx.Response(status, text=body))

    with _mock(handler) as client:
        with pytest.raises(error, match=message) as info:
            client.generate(MODEL, "x")
        assert info.value.partial.status == "error" and info.value.partial.error
        with pytest.raises(error, match=message):
            client.show(MODEL)


@pytest.mark.parametrize("body, message", [
    (_ndjson({"response": "a", "done": False}) + b"{not json\n", "malformed NDJSON"),
    (_ndjson("[1, 2]"), "malformed NDJSON"),
    (_ndjson({"response": "a", "done": False}), "stream ended before the final chunk"),
    (_ndjson({"response": "a", "done": False}, {"done": True}), "no metrics"),
    (_ndjson({"response": "a", "done": False}, {"error": "out of memory"}), "mid-stream: out of memory"),
])
def test_garbage_streams_are_transient_with_the_partial_text(body, message):
    with _mock(lambda request: httpx.Response(200, content=body)) as client:
        with pytest.raises(TransientError, match=message) as info:
            client.generate(MODEL, "x")
    partial = info.value.partial
    assert partial.status == "error" and partial.wall_ms is not None
    assert partial.response in ("", "a")


def test_non_json_answer_and_transport_errors_without_a_server():
    with _mock(lambda request: httpx.Response(200, text="<html>proxy</html>")) as client:
        with pytest.raises(TransientError, match="not JSON"):
            client.version()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _mock(refuse) as client:
        with pytest.raises(ServerUnavailableError, match="cannot connect"):
            client.generate(MODEL, "x")

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with _mock(timeout) as client:
        with pytest.raises(TransientError, match="timed out"):
            client.tags()


def test_deadline_holds_on_a_transport_without_a_socket():
    """The watchdog has no socket to shut down here; the per-line check still ends the call."""
    def trickle():
        for _ in range(50):
            time.sleep(0.02)
            yield json.dumps({"response": "w ", "done": False}).encode() + b"\n"

    with _mock(lambda request: httpx.Response(200, content=trickle())) as client:
        client.call_timeout_s = 0.2
        with pytest.raises(TransientError, match="deadline") as info:
            client.generate(MODEL, "x")
    assert 200 <= info.value.partial.wall_ms < 1000
