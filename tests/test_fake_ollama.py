"""The fake Ollama speaks Ollama's wire format, honours its timings and fails on cue.

Timing assertions are lower bounds only (the server sleeps at least that long); upper
bounds would make the suite flaky on a busy machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tr111.fake_ollama import FAULT_NAMES, FakeOllama, FakeTimings

FAST = FakeTimings(load_ms=5.0, prompt_ms_per_token=0.01, token_ms=0.5, tokens=8)
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")
MS = 1_000_000


@pytest.fixture
def fake():
    with FakeOllama(FAST) as server:
        yield server
    assert server.handler_errors == []


@pytest.fixture
def client(fake):
    with httpx.Client(base_url=fake.url, timeout=5.0) as c:
        yield c


def stream_lines(client: httpx.Client, path: str = "/api/generate", **body) -> list[str]:
    """All NDJSON lines of one streamed request (raw text, so garbage survives)."""
    body.setdefault("model", "gemma3")
    if path == "/api/generate":
        body.setdefault("prompt", "why is the sky blue")
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        return list(response.iter_lines())


def generate(client: httpx.Client, **body) -> list[dict]:
    return [json.loads(line) for line in stream_lines(client, **body)]


# -- wire format and timings --------------------------------------------------------------

def test_stream_chunks_and_final_metrics(fake, client):
    with client.stream("POST", "/api/generate",
                       json={"model": "gemma3", "prompt": "why is the sky blue"}) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        chunks = [json.loads(line) for line in response.iter_lines()]
    *tokens, final = chunks
    assert len(tokens) == FAST.tokens
    for chunk in tokens:
        assert set(chunk) == {"model", "created_at", "response", "done"}
        assert chunk["model"] == "gemma3" and chunk["done"] is False and chunk["response"]
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert all(isinstance(final[key], int) for key in METRICS)
    assert final["eval_count"] == FAST.tokens
    assert final["prompt_eval_count"] == 5 + 1  # five words + BOS
    assert "".join(c["response"] for c in tokens).startswith("The benchmark")


def test_durations_are_real_server_time(fake, client):
    timings = FakeTimings(load_ms=30, prompt_ms_per_token=1.0, first_token_extra_ms=5,
                          token_ms=3, tokens=10)
    fake.timings = timings
    started = time.perf_counter_ns()
    final = generate(client, prompt="one two three four")[-1]
    wall_ns = time.perf_counter_ns() - started
    assert final["load_duration"] >= 30 * MS
    assert final["prompt_eval_duration"] >= (5 * 1.0 + 5) * MS
    assert final["eval_duration"] >= 10 * 3 * MS
    parts = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert parts <= final["total_duration"] <= wall_ns
    rec = fake.requests[-1]
    assert rec["t_received_ns"] < rec["t_first_chunk_ns"] < rec["t_done_ns"]
    assert rec["t_first_chunk_ns"] - rec["t_received_ns"] >= (30 + 10 + 3) * MS


def test_chunks_arrive_as_written(fake, client):
    fake.timings = FakeTimings(load_ms=0, token_ms=20, tokens=5)
    arrivals = []
    with client.stream("POST", "/api/generate", json={"model": "gemma3", "prompt": "x"}) as r:
        for _ in r.iter_lines():
            arrivals.append(time.perf_counter_ns())
    # the first token reaches the client before the server has even generated the last one
    assert len(arrivals) == 6 and arrivals[0] < fake.requests[-1]["t_done_ns"]


def test_sub_millisecond_pacing(fake, client):
    fake.timings = FakeTimings(load_ms=0, token_ms=0.2, tokens=50)
    final = generate(client)[-1]
    assert final["eval_duration"] >= 50 * 0.2 * MS


def test_non_streaming_and_num_predict(client):
    body = client.post("/api/generate", json={"model": "gemma3:270m", "prompt": "hi",
                                              "stream": False,
                                              "options": {"num_predict": 3}}).json()
    assert body["done"] is True and body["done_reason"] == "length"
    assert body["response"] == "The benchmark measures" and body["eval_count"] == 3


def test_chat_stream(client):
    chunks = generate(client, path="/api/chat",
                      messages=[{"role": "user", "content": "hello there"}])
    assert chunks[0]["message"] == {"role": "assistant", "content": "The"}
    assert chunks[-1]["done"] is True and chunks[-1]["prompt_eval_count"] == 3


# -- model state --------------------------------------------------------------------------

def test_load_once_then_reload_only_on_runner_options(fake, client):
    assert fake.loaded is None
    assert generate(client)[-1]["load_duration"] >= 5 * MS
    assert generate(client, options={"temperature": 0.1})[-1]["load_duration"] == 0
    assert generate(client, options={"num_ctx": 4096})[-1]["load_duration"] == 0  # the default
    assert generate(client, options={"num_ctx": 8192})[-1]["load_duration"] > 0
    assert fake.loaded["context_length"] == 8192
    ps = client.get("/api/ps").json()["models"]
    assert [m["name"] for m in ps] == ["gemma3:latest"] and ps[0]["context_length"] == 8192
    assert {"size", "size_vram", "digest", "details", "expires_at"} <= set(ps[0])
    assert generate(client, model="gemma3:270m", options={"num_ctx": 8192})[-1]["load_duration"] > 0
    assert fake.loads == 3


def test_keep_alive_zero_unloads_after_response(fake, client):
    generate(client, keep_alive=0)
    assert fake.loaded is None and client.get("/api/ps").json() == {"models": []}
    assert generate(client)[-1]["load_duration"] > 0


def test_keep_alive_expiry(fake, client):
    generate(client, keep_alive="50ms")
    assert fake.loaded is not None
    time.sleep(0.08)
    assert fake.loaded is None


def test_empty_prompt_loads_and_unloads(fake, client):
    body = client.post("/api/generate", json={"model": "gemma3", "options": {"num_ctx": 2048}}).json()
    assert body["done_reason"] == "load" and body["done"] is True
    assert fake.loaded["model"] == "gemma3:latest" and fake.loaded["context_length"] == 2048
    body = client.post("/api/generate", json={"model": "gemma3", "keep_alive": 0}).json()
    assert body["done_reason"] == "unload"
    assert client.get("/api/ps").json()["models"] == []


def test_prompt_longer_than_context_is_truncated(fake, client):
    final = generate(client, prompt="word " * 300, options={"num_ctx": 256})[-1]
    assert final["prompt_eval_count"] == 256
    assert fake.requests[-1]["truncated"] is True


def test_metadata_endpoints(client):
    assert client.get("/api/version").json() == {"version": "0.12.0-fake"}
    names = [m["name"] for m in client.get("/api/tags").json()["models"]]
    assert names == ["gemma3:latest", "gemma3:270m"]
    show = client.post("/api/show", json={"model": "gemma3:270m"}).json()
    assert show["details"]["parameter_size"] == "268.10M"
    assert {"family", "quantization_level", "format"} <= set(show["details"])
    assert show["model_info"]["gemma3.context_length"] == 32768
    assert client.post("/api/show", json={"model": "nope"}).status_code == 404


def test_client_errors(client):
    response = client.post("/api/generate", json={"model": "llama9", "prompt": "x"})
    assert response.status_code == 404
    assert response.json() == {"error": 'model "llama9" not found, try pulling it first'}
    response = client.post("/api/generate", content=b"{not json")
    assert response.status_code == 400 and "error" in response.json()
    assert client.post("/api/generate", json={"prompt": "x"}).status_code == 400


# -- faults -------------------------------------------------------------------------------

@pytest.mark.parametrize("fault,status", [("http500", 500), ("http503", 503), ("notfound", 404)])
def test_error_faults(fake, client, fault, status):
    fake.inject(fault)
    response = client.post("/api/generate", json={"model": "gemma3", "prompt": "x"})
    assert response.status_code == status and response.json()["error"]
    assert client.post("/api/generate", json={"model": "gemma3", "prompt": "x",
                                              "stream": False}).status_code == 200


def test_faults_are_consumed_in_order_by_generation_only(fake, client):
    fake.inject("http503", "http500")
    client.get("/api/ps")
    client.post("/api/show", json={"model": "gemma3"})
    codes = [client.post("/api/generate", json={"model": "gemma3", "prompt": "x"}).status_code
             for _ in range(3)]
    assert codes == [503, 500, 200]
    assert [r["fault"] for r in fake.requests if r["path"] == "/api/generate"] == \
        ["http503", "http500", None]
    with pytest.raises(ValueError, match="unknown fault"):
        fake.inject("drop:2", "explode")
    assert fake.pending_faults == []  # all-or-nothing
    assert "stall" in FAULT_NAMES


def test_refuse(fake, client):
    fake.inject("refuse")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/api/generate", json={"model": "gemma3", "prompt": "x"})
    assert fake.requests[-1]["status"] is None


def test_drop_sends_n_chunks_then_closes(fake, client):
    fake.inject("drop:3")
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/api/generate", json={"model": "gemma3", "prompt": "x"}) as r:
            for line in r.iter_lines():
                lines.append(json.loads(line))
    assert len(lines) == 3 and not any(chunk["done"] for chunk in lines)


def test_stall_triggers_read_timeout_and_does_not_block_stop():
    fake = FakeOllama(FAST).start()
    fake.inject("stall:30")
    lines = []
    with httpx.Client(base_url=fake.url, timeout=httpx.Timeout(5.0, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            with client.stream("POST", "/api/generate",
                               json={"model": "gemma3", "prompt": "x"}) as r:
                for line in r.iter_lines():
                    lines.append(line)
    assert 1 <= len(lines) <= 2
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2.0


def test_garbage_line_mid_stream(fake, client):
    fake.inject("garbage")
    lines = stream_lines(client)
    bad = [i for i, line in enumerate(lines) if not _is_json(line)]
    assert len(bad) == 1 and 0 < bad[0] < len(lines) - 1
    assert json.loads(lines[-1])["done"] is True


def test_error_chunk_mid_stream(fake, client):
    fake.inject("error_chunk", "error_chunk")
    chunks = generate(client)
    assert "runner" in chunks[-1]["error"] and not any(c.get("done") for c in chunks)
    response = client.post("/api/generate", json={"model": "gemma3", "prompt": "x",
                                                  "stream": False})
    assert response.status_code == 500 and response.json()["error"]


def test_no_metrics(fake, client):
    fake.inject("no_metrics")
    final = generate(client)[-1]
    assert final["done"] is True and not set(METRICS) & set(final)


def test_slow_first(fake, client):
    fake.inject("slow_first:60")
    final = generate(client)[-1]
    rec = fake.requests[-1]
    assert rec["t_first_chunk_ns"] - rec["t_received_ns"] >= 60 * MS
    assert final["prompt_eval_duration"] >= 60 * MS


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


# -- process-level behaviour --------------------------------------------------------------

def test_go_down_and_come_up_on_same_port(fake, client):
    generate(client)
    port = fake.port
    fake.go_down()
    assert fake.loaded is None and not fake.is_up
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{fake.url}/api/version", timeout=1.0)
    fake.come_up()
    assert fake.port == port
    assert httpx.get(f"{fake.url}/api/version", timeout=1.0).status_code == 200
    assert generate(client)[-1]["load_duration"] > 0  # a restarted Ollama has nothing loaded


def test_go_down_cuts_a_stream_in_flight(fake, client):
    fake.timings = FakeTimings(load_ms=0, token_ms=50, tokens=100)
    threading.Timer(0.2, fake.go_down).start()
    with pytest.raises(httpx.TransportError):
        with client.stream("POST", "/api/generate", json={"model": "gemma3", "prompt": "x"}) as r:
            for _ in r.iter_lines():
                pass


def test_num_parallel_queues_requests():
    timings = FakeTimings(load_ms=0, token_ms=10, tokens=5)
    with FakeOllama(timings, num_parallel=1) as fake:
        def call():
            httpx.post(f"{fake.url}/api/generate", json={"model": "gemma3", "prompt": "x"},
                       timeout=5.0)
        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done = sorted(r["t_done_ns"] for r in fake.requests)
        assert done[-1] - done[0] >= 2 * 5 * 10 * MS * 0.9


def test_command_line():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tr111.fake_ollama", "--port", "0",
                             "--token-ms", "0.1", "--fault", "http503"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert httpx.post(f"{url}/api/generate", json={"model": "gemma3", "prompt": "x"},
                          timeout=5.0).status_code == 503
        assert httpx.get(f"{url}/api/version", timeout=5.0).json()["version"] == "0.12.0-fake"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
