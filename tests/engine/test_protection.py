"""The engine protects itself (issue 11 item 6): timeouts, body and name limits, option values, memory.

One real engine serves the module, started with short timeouts and a small
memory limit through the environment (see tr111/engine/limits.py). Figures
that docs/reliability.md quotes are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tr111.engine import EmbeddedEngine
from tr111.engine.cli import build_parser
from tr111.engine.gguf import read_gguf
from tr111.engine.limits import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_WRITE_TIMEOUT_S,
    EngineLimits,
    available_memory_bytes,
    check_memory,
    check_model_name,
)
from tr111.engine.models import packaged_gemma_path
from tr111.engine.options import KEEP_ALIVE_FOREVER_NS, RunnerOptions, parse_keep_alive, parse_options
from tr111.errors import BadRequest, ConfigError, InsufficientMemory, OptionError

MODEL = "gemma3:270m"
WRITE_TIMEOUT_S = 1.5
IDLE_TIMEOUT_S = 1.5
MIB = 1024 * 1024
# gemma3 270M needs 36 MiB of f16 KV cache at num_ctx 2048 and 72 MiB at 4096.
MEMORY_LIMIT = 64 * MIB


@pytest.fixture(scope="module")
def guarded():
    env = {"TR111_ENGINE_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
           "TR111_ENGINE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
           "TR111_ENGINE_MEMORY_LIMIT_BYTES": str(MEMORY_LIMIT)}
    with EmbeddedEngine(startup_timeout_s=60, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def http(guarded):
    with httpx.Client(base_url=guarded.url, timeout=httpx.Timeout(60.0, connect=5.0)) as client:
        yield client


def raw_post(engine: EmbeddedEngine, path: str, body: bytes, rcvbuf: int | None = None,
             declared_length: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the advertised window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((engine.host, engine.port))
    length = len(body) if declared_length is None else declared_length
    sock.sendall(b"POST %b HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%b" % (path.encode(), length, body))
    return sock


def read_response(sock: socket.socket, timeout_s: float = 15.0) -> tuple[int, dict]:
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, json.loads(rest[:length])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def generate_raw(http: httpx.Client, text: str) -> httpx.Response:
    return http.post("/api/generate", content=text.encode(), headers={"Content-Type": "application/json"})


# -- settings --------------------------------------------------------------------------


def test_limits_defaults_env_and_flags():
    assert EngineLimits.build({}) == EngineLimits(DEFAULT_WRITE_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S,
                                                  DEFAULT_MAX_BODY_BYTES, None)
    assert (DEFAULT_WRITE_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES) == (30.0, 60.0, 16 * MIB)
    env = {"TR111_ENGINE_WRITE_TIMEOUT_S": "2", "TR111_ENGINE_IDLE_TIMEOUT_S": "3",
           "TR111_ENGINE_MAX_BODY_BYTES": "1000", "TR111_ENGINE_MEMORY_LIMIT_BYTES": "5e9"}
    assert EngineLimits.build(env) == EngineLimits(2.0, 3.0, 1000, 5_000_000_000)
    assert EngineLimits.build(env, write_timeout_s=7.0, max_body_bytes=None).write_timeout_s == 7.0
    for bad in ({"TR111_ENGINE_WRITE_TIMEOUT_S": "soon"}, {"TR111_ENGINE_IDLE_TIMEOUT_S": "0"},
                {"TR111_ENGINE_MAX_BODY_BYTES": "-1"}, {"TR111_ENGINE_WRITE_TIMEOUT_S": "nan"}):
        with pytest.raises(ConfigError):
            EngineLimits.build(bad)
    args = build_parser().parse_args(["serve", "--write-timeout", "5", "--idle-timeout", "9",
                                      "--max-body-bytes", "123", "--memory-limit-bytes", "456"])
    assert (args.write_timeout, args.idle_timeout, args.max_body_bytes, args.memory_limit_bytes) == (5, 9, 123, 456)


# -- row 8: a client that never reads ------------------------------------------------------


@pytest.mark.slow
def test_non_reading_client_is_dropped_and_the_next_is_served(guarded, http):
    assert http.post("/api/generate", json={"model": MODEL, "prompt": ""}).status_code == 200  # loaded
    body = json.dumps({"model": MODEL, "prompt": "Write a very long story.", "stream": True,
                       "options": {"num_predict": 100_000, "temperature": 1.0}}).encode()
    stuck = raw_post(guarded, "/api/generate", body, rcvbuf=1)
    try:
        time.sleep(0.5)  # the stuck request holds the turn now
        started = time.monotonic()
        follow_up = http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                     "options": {"num_predict": 4}})
        waited = time.monotonic() - started
        print(f"\n[row 8] follow-up served after {waited:.2f} s with write timeout {WRITE_TIMEOUT_S} s")
        assert follow_up.status_code == 200 and follow_up.json()["done"] is True
        # Unguarded, it waits for 100k tokens (hours); guarded, for the stuck client's ~4.5 KB
        # receive window to fill (~40 tokens, slow on a busy 2-core box) plus the write timeout.
        assert waited < 30
        log_text = guarded.log_path.read_text(errors="replace")
        assert "generation stopped (client stopped reading for 1.5 s)" in log_text \
            or "generation stopped (no bytes accepted for 1.5 s)" in log_text
        # The stalled connection was closed by the engine: after what is buffered, EOF.
        stuck.settimeout(10)
        received = 0
        while chunk := stuck.recv(65536):
            received += len(chunk)
        print(f"[row 8] the stuck client got {received} bytes, then EOF")
        assert received > 0
    finally:
        stuck.close()


# -- idle connections ----------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed(guarded):
    with socket.create_connection((guarded.host, guarded.port)) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: engine\r\n\r\n")
        status, body = read_response(sock)
        assert status == 200 and "version" in body
        started = time.monotonic()
        assert sock.recv(65536) == b""  # the engine closed the idle connection
        closed_after = time.monotonic() - started
    with socket.create_connection((guarded.host, guarded.port)) as silent:
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""  # connected, never sent a request
        silent_after = time.monotonic() - started
    print(f"\n[idle] keep-alive closed after {closed_after:.2f} s, silent after {silent_after:.2f} s")
    assert IDLE_TIMEOUT_S - 0.3 <= closed_after < IDLE_TIMEOUT_S + 5
    assert silent_after < IDLE_TIMEOUT_S + 5


def test_stalled_body_is_dropped_and_others_are_served(guarded, http):
    with socket.create_connection((guarded.host, guarded.port)) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: engine\r\nContent-Length: 1000\r\n\r\n{\"mo")
        assert http.get("/api/version").status_code == 200
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(65536) == b""
        assert time.monotonic() - started < IDLE_TIMEOUT_S + 5
    assert "request body not received within 1.5 s; connection closed" in \
        guarded.log_path.read_text(errors="replace")


# -- row 9: bodies -----------------------------------------------------------------------------


def test_50_mb_body_gets_413_quickly_and_unread(guarded, http):
    rss_before = rss_bytes(guarded.pid)
    started = time.monotonic()
    sock = raw_post(guarded, "/api/generate", b'{"model":"gemma3:270m","prompt":"' + b"x" * 65536,
                    declared_length=50 * MIB)
    try:
        status, body = read_response(sock)
    finally:
        sock.close()
    raw_s = time.monotonic() - started
    assert status == 413
    assert body == {"error": f"request body too large: {50 * MIB} bytes, the limit is {16 * MIB} bytes"}
    # A client that sends the whole 50 MB before reading (httpx, ollama) sees the 413 too.
    prompt = json.dumps({"model": MODEL, "prompt": "x" * (50 * MIB)})
    started = time.monotonic()
    response = generate_raw(http, prompt)
    full_s = time.monotonic() - started
    rss_growth = rss_bytes(guarded.pid) - rss_before
    print(f"\n[row 9] 50 MB body: 413 after {raw_s:.3f} s (headers only), {full_s:.2f} s (whole body sent); "
          f"engine RSS growth {rss_growth / MIB:.1f} MiB")
    assert response.status_code == 413 and "request body too large" in response.json()["error"]
    assert raw_s < 5 and full_s < 15
    assert rss_growth < 32 * MIB


def test_chunked_body_over_the_limit_gets_413(http):
    def chunks():
        for _ in range(17):
            yield b"x" * MIB

    response = http.post("/api/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"].startswith("request body too large")


# -- row 9: option values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "name", "message"),
    [
        ('{"num_ctx": NaN}', "num_ctx", "must be a finite number, got NaN"),
        ('{"num_predict": Infinity}', "num_predict", "must be a finite number, got Infinity"),
        ('{"temperature": -Infinity}', "temperature", "must be a finite number, got -Infinity"),
        ('{"num_ctx": 1e30}', "num_ctx", "must be between 0 and 16777216"),
        ('{"num_predict": 1e300}', "num_predict", "must be between -2 and 2147483647"),
        ('{"temperature": -0.5}', "temperature", "must be at least 0, got -0.5"),
        ('{"top_k": -1}', "top_k", "must be between 0 and 2147483647, got -1"),
        ('{"top_p": 1.5}', "top_p", "must be between 0 and 1, got 1.5"),
        ('{"seed": 1e30}', "seed", "must be between"),
        ('{"num_gpu": -7}', "num_gpu", "must be between -1 and 2147483647, got -7"),
        ('{"num_thread": 100000}', "num_thread", "must be between 0 and 512, got 100000"),
        ('{"num_batch": -3}', "num_batch", "must be between 0 and 1048576, got -3"),
        ('{"mirostat": 3}', "mirostat", "must be between 0 and 2, got 3"),
        ('{"repeat_penalty": 1e39}', "repeat_penalty", "must be between 0 and 3.40282e+38, got 1e+39"),
    ],
)
def test_bad_option_values_get_400_naming_the_option(http, options, name, message):
    response = generate_raw(http, '{"model": "gemma3:270m", "prompt": "hi", "stream": false, '
                                  f'"options": {options}}}')
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith(f"option '{name}' ") and message in error, error


@pytest.mark.parametrize("keep_alive", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_keep_alive_gets_400(http, keep_alive):
    response = generate_raw(http, f'{{"model": "gemma3:270m", "prompt": "", "keep_alive": {keep_alive}}}')
    assert response.status_code == 400
    assert response.json()["error"].startswith("keep_alive must be a finite number of seconds")


@pytest.mark.slow
def test_huge_keep_alive_means_forever_without_overflow(http):
    for keep_alive in ("1e308", '"99999999999999h"', '"' + "9" * 400 + '"'):
        response = generate_raw(http, f'{{"model": "gemma3:270m", "prompt": "", "keep_alive": {keep_alive}}}')
        assert response.status_code == 200, (keep_alive, response.text)
        assert response.json()["done_reason"] == "load"
        expires = http.get("/api/ps").json()["models"][0]["expires_at"]
        assert expires > "2300"  # ~292 years out, as Ollama's "forever"
    print(f"\n[row 9] keep_alive 1e308 -> 200, expires_at {expires}")


def test_option_values_unit():
    runner, sampling = parse_options({"num_ctx": 0, "num_thread": 0, "seed": -1, "num_predict": -2,
                                      "repeat_last_n": -1, "num_gpu": -1, "top_p": 1, "temperature": 0},
                                     RunnerOptions(n_threads=2))
    assert runner == RunnerOptions(n_threads=2)
    assert (sampling.seed, sampling.num_predict, sampling.repeat_last_n) == (-1, -2, -1)
    with pytest.raises(OptionError, match="'num_keep' must be between -1"):
        parse_options({"num_keep": -5}, RunnerOptions())
    assert parse_keep_alive(1e308) == parse_keep_alive("99999999999999h") == KEEP_ALIVE_FOREVER_NS
    assert parse_keep_alive("1" * 400) == KEEP_ALIVE_FOREVER_NS
    with pytest.raises(OptionError) as caught:
        parse_keep_alive("x" * 1_000_000)
    assert len(str(caught.value)) < 200


# -- row 9: model names ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
@pytest.mark.parametrize("name", [" " * 1_000_000, "gemma3:270m" + " " * 10, "bad name!", "-gemma", "a" * 257,
                                  "gemma3\n:270m", "../../etc/passwd"])
def test_invalid_model_name_gets_400_without_echo(http, path, name):
    started = time.monotonic()
    response = http.post(path, json={"model": name, "prompt": "hi", "messages": [], "stream": False})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith(f"invalid model name ({len(name)} characters)")
    assert len(response.content) < 300 and name not in error
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("name", ["nosuch:model", "registry.example.com/me/model_x-1.5:q4", "a" * 256])
def test_unknown_valid_model_name_is_still_404(http, name):
    response = http.post("/api/generate", json={"model": name, "prompt": "hi"})
    assert response.status_code == 404
    assert response.json() == {"error": f"model '{name}' not found"}


def test_model_name_rules_unit():
    for good in ("gemma3", "gemma3:270m", "library/gemma3:latest", "hf.co/me/x_y-z.1:Q4_K_M"):
        check_model_name(good)
    for bad in ("", " gemma3", "gemma3 ", "_x", "x" * 257, "a|b", "ü"):
        with pytest.raises(BadRequest):
            check_model_name(bad)


# -- row 9: a context that does not fit in memory --------------------------------------------------


@pytest.mark.slow
def test_num_ctx_beyond_memory_is_refused_and_the_model_stays(http):
    assert http.post("/api/generate", json={"model": MODEL, "prompt": ""}).status_code == 200
    response = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                                "options": {"num_ctx": 4096, "num_predict": 2}})
    print(f"\n[row 9] num_ctx 4096 with a 64 MiB limit -> {response.status_code} {response.json()}")
    assert response.status_code == 500
    assert response.json() == {"error": "model requires more system memory (72.0 MiB) than is available "
                                         "(64.0 MiB): num_ctx 4096 needs a 72.0 MiB KV cache; use a smaller num_ctx"}
    assert [m["context_length"] for m in http.get("/api/ps").json()["models"]] == [2048]
    served = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                              "options": {"num_predict": 2}})
    assert served.status_code == 200


def test_memory_check_unit():
    path, _ = packaged_gemma_path()
    info = read_gguf(path)
    assert info.kv_cache_bytes(131072) == 2304 * MIB  # 18 layers x 1 KV head x (256 + 256) x 2 bytes
    with pytest.raises(InsufficientMemory, match=r"requires more system memory \(2.2 GiB\) than is available "
                                                 r"\(1.0 GiB\): num_ctx 131072"):
        check_memory(info, 131072, True, path.stat().st_size, limit_override=1024 * MIB)
    check_memory(info, 2048, True, path.stat().st_size, limit_override=1024 * MIB)
    with pytest.raises(InsufficientMemory):  # without mmap the weights count too
        check_memory(info, 2048, False, path.stat().st_size, limit_override=200 * MIB)
    assert available_memory_bytes(123) == 123
    available = available_memory_bytes()
    assert available is not None and available > 0
    huge = 2**24  # the largest num_ctx accepted as a value: a 288 GiB KV cache for this model
    if info.kv_cache_bytes(huge) > available:  # against the real MemAvailable
        with pytest.raises(InsufficientMemory, match=r"\(288.0 GiB\) than is available"):
            check_memory(info, huge, True, path.stat().st_size, limit_override=None)


# -- the official client still works -----------------------------------------------------------------


@pytest.mark.slow
def test_official_ollama_client_against_the_guarded_engine(guarded):
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=guarded.url)
    answer = client.generate(model=MODEL, prompt="The capital of France is", options={"num_predict": 4})
    assert answer.done and answer.eval_count >= 1
    pieces = list(client.generate(model=MODEL, prompt="Hi", stream=True, options={"num_predict": 4}))
    assert pieces[-1].done
    assert MODEL in [m.model for m in client.list().models]
    assert client.show(MODEL).details is not None
    assert [m.model for m in client.ps().models] == [MODEL]
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model=MODEL, prompt="Hi", options={"top_p": 7})
    assert caught.value.status_code == 400 and "top_p" in caught.value.error


# -- a prompt far beyond the context -----------------------------------------------------------------


@pytest.mark.slow
def test_huge_prompt_under_the_body_limit_is_cut_before_tokenizing(http, guarded):
    words = "The quick brown fox jumps over the lazy dog near the river bank. "
    prompt = words * (15 * MIB // len(words))  # 15 MiB: under the 16 MiB limit
    assert http.post("/api/generate", json={"model": MODEL, "prompt": "", "options": {"num_ctx": 512}}
                     ).status_code == 200  # loaded with that context
    rss_before = rss_bytes(guarded.pid)
    started = time.monotonic()
    response = http.post("/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False,
                                                "options": {"num_predict": 2, "num_ctx": 512}})
    took = time.monotonic() - started
    rss_growth = rss_bytes(guarded.pid) - rss_before
    print(f"\n[row 9] 15 MiB prompt -> {response.status_code} in {took:.2f} s, "
          f"prompt_eval_count {response.json().get('prompt_eval_count')}, RSS growth {rss_growth / MIB:.0f} MiB")
    assert response.status_code == 200
    assert response.json()["prompt_eval_count"] <= 512
    assert took < 30  # tokenizing all of it takes ~25 s alone on an idle 2-core box
    assert rss_growth < 160 * MIB  # the body, its str and JSON copies; not a 15 MiB token list
    assert "before tokenizing" in guarded.log_path.read_text(errors="replace")


@pytest.mark.slow
def test_cut_prompt_tokens_equal_the_whole_prompt_truncated():
    llama_cpp = pytest.importorskip("llama_cpp")
    from tr111.engine.runner import tokenize, truncate_prompt
    from tr111.engine.scheduler import LoadedModel

    path, _ = packaged_gemma_path()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        loaded = LoadedModel(entry=None, runner_options=RunnerOptions(n_ctx=256), llm=llm,
                             size_bytes=0, size_vram_bytes=0)
        prompt = "".join(f"Line {i}: the value is {i * 7 % 13} ünïcödé … ok.\n" for i in range(6_000))
        whole = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        for num_keep in (0, 4, 30):
            expected = truncate_prompt(whole, 256, num_keep, True)
            assert tokenize(loaded, prompt, num_keep) == expected
        assert 1 < loaded.max_piece_bytes < 256
    finally:
        llm.close()
