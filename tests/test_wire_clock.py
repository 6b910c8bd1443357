"""The wire clock (tr111/ollama/wire.py): TTFT and wall time stamped at the socket.

Against the real HTTP fake on loopback, in this process, so the fake's own request records
(``t_received_ns``, ``t_first_chunk_ns``) share the client's perf_counter clock and the stamps
can be checked against what the server did, nanosecond for nanosecond: causality, not timing.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest

from fixtures_report import START, build_sweep
from tr111.cli import main
from tr111.fake_ollama import FakeOllama, FakeTimings
from tr111.ollama.client import OllamaClient
from tr111.ollama.wire import WireStamps, stamps_of, wire_transport
from tr111.report.service import generate
from tr111.warehouse import connect

TIMINGS = FakeTimings(load_ms=0.0, token_ms=2.0, tokens=6, prompt_ms_per_token=0.01, jitter_ms=0.0)


@pytest.fixture()
def fake():
    with FakeOllama(TIMINGS) as server:
        yield server


def _generations(fake):
    return [r for r in fake.requests if r["path"] == "/api/generate"]


def test_stamps_bracket_what_the_server_did_on_each_request_of_a_kept_alive_connection(fake):
    body = {"model": "gemma3:latest", "prompt": "hello", "stream": True}
    seen: list[tuple[int, int, int, int, WireStamps]] = []
    with httpx.Client(base_url=fake.url, transport=wire_transport()) as client:
        for _ in range(3):
            before = time.perf_counter_ns()
            with client.stream("POST", "/api/generate", json=body) as resp:
                stamps = stamps_of(resp)
                sent = stamps.sent_ns
                first = after = None
                for line in resp.iter_lines():
                    if first is None and line and json.loads(line).get("response"):
                        first, after = stamps.received_ns, time.perf_counter_ns()
            seen.append((before, sent, first, after, stamps))
    records = _generations(fake)
    assert len(records) == 3
    for (before, sent, first, after, _), rec in zip(seen, records):
        # the request left after the call began and before the server had it
        assert before <= sent <= rec["t_received_ns"]
        # the first token's bytes were read after the server wrote them, and before the line was parsed
        assert rec["t_first_chunk_ns"] <= first <= after
    # one connection, kept alive: each request restarts the send stamp after the last response
    assert len({id(s[4]) for s in seen}) == 1
    assert seen[0][2] < seen[1][1] < seen[1][2] < seen[2][1]


def test_generate_times_from_the_socket_and_never_below_the_servers_own_time(fake):
    with OllamaClient(fake.url) as client:
        results = []
        for _ in range(4):
            before = time.perf_counter_ns()
            results.append((client.generate("gemma3:latest", "hello", {"num_predict": 6}),
                            time.perf_counter_ns() - before))
    for (result, outer_ns), rec in zip(results, _generations(fake)):
        assert result.status == "ok" and result.ttft_clock == "socket"
        server_ttft_ms = (rec["t_first_chunk_ns"] - rec["t_received_ns"]) / 1e6
        # <= : the first token and the final chunk can arrive in one read
        assert server_ttft_ms <= result.ttft_ms <= result.wall_ms <= outer_ns / 1e6
        assert result.as_row()["ttft_clock"] == "socket"


def test_a_transport_without_a_socket_is_stamped_around_httpx():
    chunks = [{"response": "a", "done": False},
              {"response": "", "done": True, "total_duration": 1_000_000, "load_duration": 0,
               "prompt_eval_count": 1, "prompt_eval_duration": 100_000, "eval_count": 1,
               "eval_duration": 100_000}]
    mock = httpx.MockTransport(lambda request: httpx.Response(
        200, content="\n".join(json.dumps(c) for c in chunks).encode()))
    with OllamaClient("http://mock", transport=mock) as client:
        result = client.generate("m", "p")
    assert result.status == "ok" and result.ttft_clock == "client" and result.ttft_ms is not None


def test_compare_does_not_test_ttft_across_clocks(tmp_path, capsys):
    """A candidate stamped at the socket, its TTFTs halved: with the baseline's clock that is a
    significant change (the control); across clocks TTFT is not compared, decode still is."""
    wh = tmp_path / "wh.duckdb"
    build_sweep(wh, "old", seed=1, started_at=START, stages=True)
    build_sweep(wh, "same-clock", seed=2, started_at=START + timedelta(days=1), stages=True)
    build_sweep(wh, "socket", seed=2, started_at=START + timedelta(days=2), stages=True)
    with connect(wh) as con:
        con.execute("UPDATE llm_calls SET ttft_ms = ttft_ms / 2 WHERE sweep_id IN ('same-clock', 'socket')")
        con.execute("UPDATE llm_calls SET ttft_clock = 'socket' WHERE sweep_id = 'socket'")

    def ttft(candidate):
        assert main(["compare", "--baseline", "old", "--candidate", candidate, "--warehouse", str(wh),
                     "--json"]) in (0, 3)
        rows = json.loads(capsys.readouterr().out)["rows"]
        return [r["warm_ttft_ms"][stage] for r in rows for stage in ("analysis", "report")], \
            [r["decode_tps"][stage] for r in rows for stage in ("analysis", "report")]

    same, _ = ttft("same-clock")
    assert all(c["p_value"] is not None and c["p_value"] < 0.05 for c in same)
    across, decode = ttft("socket")
    assert all(c["p_value"] is None and "TTFT clocks differ (baseline: client, candidate: socket" in c["note"]
               for c in across)
    assert all(c["p_value"] is not None for c in decode)


def test_the_report_says_which_clock_stamped_its_ttfts(tmp_path):
    wh = tmp_path / "wh.duckdb"
    build_sweep(wh, "wire", seed=3, started_at=START, stages=True)
    build_sweep(wh, "mixed", seed=4, started_at=START + timedelta(days=1), stages=True)
    with connect(wh) as con:
        con.execute("UPDATE llm_calls SET ttft_clock = 'socket' WHERE sweep_id = 'wire' OR "
                    "(sweep_id = 'mixed' AND stage = 'report')")
    texts = {sweep: generate(wh, sweep, tmp_path / "out", "templates", threshold_pct=5.0).path.read_text()
             for sweep in ("wire", "mixed")}
    assert "to the read that delivered the first streamed token (tr111's wire clock" in texts["wire"]
    assert "two clocks" not in texts["wire"]
    assert "**two clocks in this sweep** (client, socket)" in texts["mixed"]
