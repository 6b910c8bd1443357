"""Ollama API conformance of the embedded engine, against the real server and model.

One engine serves the whole module; generations are kept to a few tokens.
Tests that load the model are marked slow.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tr111.engine import is_embedded_version

MODEL = "gemma3:270m"

METRIC_FIELDS = ("total_duration", "load_duration", "prompt_eval_count",
                 "prompt_eval_duration", "eval_count", "eval_duration")
DETAIL_FIELDS = {"parent_model", "format", "family", "families", "parameter_size", "quantization_level"}
PROMPT = "The capital of France is"
SHORT = {"num_predict": 8}


def parse_time(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None, stamp
    return parsed


def assert_recent(stamp: str) -> None:
    assert abs((datetime.now(UTC) - parse_time(stamp)).total_seconds()) < 120


def assert_final_metrics(final: dict) -> None:
    for field in METRIC_FIELDS:
        assert isinstance(final[field], int) and not isinstance(final[field], bool), field
        assert final[field] >= 0, field
    assert final["total_duration"] >= final["load_duration"] + final["eval_duration"]
    assert final["prompt_eval_count"] >= 1 and final["prompt_eval_duration"] > 0
    assert final["eval_count"] >= 1 and final["eval_duration"] > 0


def stream_lines(client: httpx.Client, path: str, body: dict) -> list[dict]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.iter_lines() if line]


def loaded_models(client: httpx.Client) -> list[dict]:
    response = client.get("/api/ps")
    assert response.status_code == 200
    return response.json()["models"]


# -- endpoints that need no model load ---------------------------------------------


def test_version_identifies_the_embedded_engine(client):
    response = client.get("/api/version")
    assert response.status_code == 200
    assert is_embedded_version(response.json()["version"])


def test_tags_lists_models_with_ollama_fields(client):
    models = client.get("/api/tags").json()["models"]
    gemma = next(model for model in models if model["name"] == MODEL)
    assert gemma["model"] == MODEL
    assert isinstance(gemma["size"], int) and gemma["size"] > 100_000_000
    assert len(gemma["digest"]) == 64 and int(gemma["digest"], 16) >= 0
    assert_recent_or_past(gemma["modified_at"])
    assert set(gemma["details"]) == DETAIL_FIELDS
    assert gemma["details"]["format"] == "gguf" and gemma["details"]["family"] == "gemma3"
    assert gemma["details"]["quantization_level"] == "Q4_K_M"


def assert_recent_or_past(stamp: str) -> None:
    assert parse_time(stamp) <= datetime.now(UTC) + timedelta(seconds=5)


def test_show_returns_details_and_model_info(client):
    response = client.post("/api/show", json={"model": MODEL})
    assert response.status_code == 200
    shown = response.json()
    assert set(shown["details"]) == DETAIL_FIELDS
    assert shown["model_info"]["general.architecture"] == "gemma3"
    assert isinstance(shown["model_info"]["gemma3.context_length"], int)
    assert_recent_or_past(shown["modified_at"])
    assert "completion" in shown["capabilities"]


def test_name_without_tag_means_latest(engine):
    from tr111.engine import EmbeddedEngine

    gemma_path = engine.model_files[MODEL]
    with EmbeddedEngine(models={"tiny": gemma_path}) as other, httpx.Client(base_url=other.url) as http:
        names = [model["name"] for model in http.get("/api/tags").json()["models"]]
        assert "tiny:latest" in names
        assert http.post("/api/show", json={"model": "tiny"}).status_code == 200
        assert http.post("/api/show", json={"model": "tiny:latest"}).status_code == 200
        assert http.post("/api/show", json={"model": "tiny:other"}).status_code == 404


def test_restart_replaces_the_process_and_keeps_the_url():
    from tr111.engine import EmbeddedEngine

    with EmbeddedEngine() as fresh:
        url, first_pid = fresh.url, fresh.pid
        elapsed_ms = fresh.restart()
        assert elapsed_ms > 0 and fresh.pid != first_pid and fresh.url == url
        assert httpx.get(f"{url}/api/version").status_code == 200
    assert not fresh.is_running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/version")


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_unknown_model_is_404(client, path):
    body = {"model": "no-such-model:1b", "prompt": "hi", "messages": []}
    response = client.post(path, json=body)
    assert response.status_code == 404
    assert "not found" in response.json()["error"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        json.dumps({"model": MODEL, "prompt": 5}).encode(),
        json.dumps({"model": MODEL, "prompt": "x", "stream": "yes"}).encode(),
        json.dumps({"model": MODEL, "prompt": "x", "options": {"num_ctx": "big"}}).encode(),
        json.dumps({"model": MODEL, "prompt": "x", "keep_alive": "soon"}).encode(),
        json.dumps({"prompt": "x"}).encode(),
    ],
)
def test_bad_body_is_400_with_error_json(client, content):
    response = client.post("/api/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


def test_bad_chat_messages_are_400(client):
    response = client.post("/api/chat", json={"model": MODEL, "messages": [{"role": 1, "content": "x"}]})
    assert response.status_code == 400


# -- generation -----------------------------------------------------------------


@pytest.mark.slow
def test_generate_stream_chunks_and_final_metrics(client):
    lines = stream_lines(client, "/api/generate", {"model": MODEL, "prompt": PROMPT, "options": SHORT})
    *chunks, final = lines
    assert chunks, "expected at least one token chunk"
    for chunk in chunks:
        assert chunk["model"] == MODEL and chunk["done"] is False
        assert isinstance(chunk["response"], str)
        assert_recent(chunk["created_at"])
    assert final["done"] is True and final["response"] == ""
    assert final["done_reason"] in {"stop", "length"}
    assert_final_metrics(final)
    if final["done_reason"] == "length":
        assert final["eval_count"] == SHORT["num_predict"]
    assert all(isinstance(token, int) for token in final["context"])


@pytest.mark.slow
def test_generate_without_streaming(client):
    response = client.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "stream": False,
                                                  "options": SHORT})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    final = response.json()
    assert final["done"] is True and isinstance(final["response"], str) and final["response"]
    assert final["done_reason"] == "length" and final["eval_count"] == 8
    assert_final_metrics(final)


@pytest.mark.slow
def test_chat_stream_and_non_stream(client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "options": SHORT}
    *chunks, final = stream_lines(client, "/api/chat", body)
    for chunk in chunks:
        assert chunk["message"]["role"] == "assistant" and isinstance(chunk["message"]["content"], str)
        assert chunk["done"] is False
    assert final["done"] is True and final["message"] == {"role": "assistant", "content": ""}
    assert_final_metrics(final)
    whole = client.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["done"] is True and whole["message"]["role"] == "assistant"
    assert whole["message"]["content"]
    assert_final_metrics(whole)


@pytest.mark.slow
def test_ps_reports_the_loaded_model(client):
    client.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "stream": False, "options": SHORT})
    (model,) = loaded_models(client)
    assert model["name"] == MODEL and model["model"] == MODEL
    assert set(model["details"]) == DETAIL_FIELDS
    assert isinstance(model["size"], int) and model["size"] > 0
    assert isinstance(model["size_vram"], int) and 0 <= model["size_vram"] <= model["size"]
    assert model["context_length"] == 2048
    expires_in = parse_time(model["expires_at"]) - datetime.now(UTC)
    assert timedelta(minutes=4) < expires_in <= timedelta(minutes=5, seconds=5)


@pytest.mark.slow
def test_num_ctx_change_reloads_but_temperature_does_not(client):
    base = {"model": MODEL, "prompt": PROMPT, "stream": False}
    client.post("/api/generate", json={**base, "options": {**SHORT, "num_ctx": 2048}})
    reloaded = client.post("/api/generate", json={**base, "options": {**SHORT, "num_ctx": 1024}}).json()
    assert loaded_models(client)[0]["context_length"] == 1024
    same_runner = client.post("/api/generate", json={
        **base, "options": {**SHORT, "num_ctx": 1024, "temperature": 0.1}}).json()
    assert loaded_models(client)[0]["context_length"] == 1024
    assert reloaded["load_duration"] > 10_000_000  # a real model load: > 10 ms
    assert same_runner["load_duration"] * 20 < reloaded["load_duration"]


@pytest.mark.slow
def test_keep_alive_zero_unloads_after_the_response(client):
    final = client.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "stream": False,
                                               "keep_alive": 0, "options": SHORT}).json()
    assert final["done"] is True
    assert loaded_models(client) == []


@pytest.mark.slow
def test_empty_prompt_loads_and_keep_alive_zero_unloads(client):
    loaded = client.post("/api/generate", json={"model": MODEL}).json()
    assert loaded["done"] is True and loaded["done_reason"] == "load"
    assert [model["name"] for model in loaded_models(client)] == [MODEL]
    unloaded = client.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload" and unloaded["message"]["content"] == ""
    assert loaded_models(client) == []


@pytest.mark.slow
def test_keep_alive_expiry_unloads_idle_model(client):
    client.post("/api/generate", json={"model": MODEL, "keep_alive": "1s"})
    assert loaded_models(client)
    deadline = time.monotonic() + 10
    while loaded_models(client) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert loaded_models(client) == []


@pytest.mark.slow
def test_negative_keep_alive_means_forever(client):
    client.post("/api/generate", json={"model": MODEL, "keep_alive": -1})
    (model,) = loaded_models(client)
    assert parse_time(model["expires_at"]).year > 2200
    client.post("/api/generate", json={"model": MODEL, "keep_alive": 0})


@pytest.mark.slow
def test_long_prompt_keeps_tail_and_counts_evaluated_tokens(client):
    body = {"model": MODEL, "prompt": "one two three four " * 150, "stream": False,
            "options": {"num_ctx": 256, "num_predict": 2}}
    first = client.post("/api/generate", json=body).json()
    keep = 4 + 1  # num_keep + BOS
    assert first["prompt_eval_count"] == 256 - (256 - keep) // 2
    again = client.post("/api/generate", json=body).json()
    # The KV cache already holds the prompt: only what was decoded is counted.
    assert 1 <= again["prompt_eval_count"] < first["prompt_eval_count"]


@pytest.mark.slow
def test_stop_sequence_ends_the_response(client):
    body = {"model": MODEL, "prompt": PROMPT, "stream": False,
            "options": {"num_predict": 12, "temperature": 0, "seed": 1}}
    text = client.post("/api/generate", json=body).json()["response"]
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    stopped = client.post("/api/generate", json={**body, "options": {**body["options"], "stop": [stop]}}).json()
    assert stopped["done_reason"] == "stop"
    assert stopped["response"] == text[: text.index(stop)]


@pytest.mark.slow
def test_unknown_options_are_ignored(client):
    response = client.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "stream": False,
                                                  "options": {**SHORT, "warp_factor": 9}})
    assert response.status_code == 200


@pytest.mark.slow
def test_client_disconnect_stops_generation(client, engine):
    body = {"model": MODEL, "prompt": PROMPT, "options": {"num_predict": 100_000}}
    with httpx.Client(base_url=engine.url, timeout=60) as leaving, \
            leaving.stream("POST", "/api/generate", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        next(lines)
    started = time.monotonic()
    follow_up = client.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "stream": False,
                                                   "options": SHORT})
    assert follow_up.status_code == 200
    # Had generation gone on, the follow-up would queue behind ~2000 tokens.
    assert time.monotonic() - started < 30
    log_text = engine.log_path.read_text(errors="replace")
    assert "client disconnected; generation stopped" in log_text


@pytest.mark.slow
def test_concurrent_requests_are_served_one_at_a_time(client):
    results: list[dict] = []

    def request() -> None:
        results.append(client.post("/api/generate", json={
            "model": MODEL, "prompt": PROMPT, "stream": False, "options": SHORT}).json())

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and all(result["done"] for result in results)
    # Each generation ran in [end - (prompt eval + eval), end]; the two must not overlap.
    windows = sorted(
        (parse_time(r["created_at"]) - timedelta(microseconds=(r["prompt_eval_duration"] + r["eval_duration"]) / 1000),
         parse_time(r["created_at"]))
        for r in results
    )
    (_, first_end), (second_start, _) = windows
    assert second_start >= first_end - timedelta(milliseconds=5)
