"""Harness overhead per call: what tr111's client adds to what the server itself spent.

Against the fake Ollama with known timings, in this process (its request records carry
``t_received_ns`` / ``t_first_chunk_ns`` / ``t_done_ns`` on this process's perf_counter
clock), alternating call by call:

* ``tr111``: ``OllamaClient.generate`` as a sweep records it (``wall_ms``, ``ttft_ms``
  stamped at the socket by tr111/ollama/wire.py, ``total_duration_ms`` from the final chunk);
* ``raw httpx``: the control, a bare ``httpx.Client.stream`` + ``iter_lines`` +
  ``json.loads`` loop with the same body, stamped around httpx (before ``stream``, at each
  parsed line), as tr111 stamped until the wire clock;
* ``tr111 in a Prefect task`` (with ``--prefect``): the same generate inside a Prefect
  task of a running flow, as the ``llm-call`` task runs it (Prefect's event, log and
  API threads share the GIL with the client), raw control in the same flow.

Figures: overhead = ``wall_ms - total_duration_ms`` (median, p95; target median <= 1 ms);
TTFT excess = client TTFT - the server's own time to its first chunk
(``t_first_chunk_ns - t_received_ns``); tr111's TTFT excess minus the raw control's
(median; target <= 1 ms).

    python -m bench.harness_overhead [--calls 300] [--tokens 32] [--token-ms 0.5]
        [--prompt-words 600] [--prefect [--quiesce-ms 5]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench._common import isolated_prefect_home, machine_line, median, pct, reproduce_line

MODEL = "gemma3:latest"
NS_PER_MS = 1_000_000


def raw_call(client, body: dict) -> dict:
    """The control: the least a Python client can do to time one streamed generate."""
    t0 = time.perf_counter_ns()
    ttft = wall = None
    final: dict = {}
    with client.stream("POST", "/api/generate", json=body) as response:
        for line in response.iter_lines():
            now = time.perf_counter_ns()
            if not line:
                continue
            chunk = json.loads(line)
            if ttft is None and chunk.get("response"):
                ttft = (now - t0) / NS_PER_MS
            if chunk.get("done"):
                wall = (now - t0) / NS_PER_MS
                final = chunk
                break
    return {"ttft_ms": ttft, "wall_ms": wall, "total_duration_ms": final["total_duration"] / NS_PER_MS}


def tr111_call(client, body: dict) -> dict:
    call = client.generate(MODEL, body["prompt"], body.get("options"))
    return {"ttft_ms": call.ttft_ms, "wall_ms": call.wall_ms,
            "total_duration_ms": call.server.total_duration_ms}


def server_side(fake, t_call_ns: int, t_back_ns: int) -> dict:
    """The fake's record of the last /api/generate: its own time to the first chunk, and the
    two legs outside total_duration (call start -> request received; final chunk sent ->
    call returned)."""
    rec = next(r for r in reversed(fake.requests) if r["path"] == "/api/generate")
    return {"server_ttft_ms": (rec["t_first_chunk_ns"] - rec["t_received_ns"]) / NS_PER_MS,
            "request_leg_ms": (rec["t_received_ns"] - t_call_ns) / NS_PER_MS,
            "response_leg_ms": (t_back_ns - rec["t_done_ns"]) / NS_PER_MS}


def measure(contenders: dict, fake, body: dict, calls: int, warmup: int) -> dict[str, list[dict]]:
    samples: dict[str, list[dict]] = {name: [] for name in contenders}
    for i in range(warmup + calls):
        order = list(contenders.items())
        if i % 2:
            order.reverse()  # alternate who goes first, so drift hits both alike
        for name, call in order:
            t_call = time.perf_counter_ns()
            row = call(body)
            row.update(server_side(fake, t_call, time.perf_counter_ns()))
            if i >= warmup:
                samples[name].append(row)
    return samples


def summarise(name: str, rows: list[dict]) -> dict:
    overhead = [r["wall_ms"] - r["total_duration_ms"] for r in rows]
    excess = [r["ttft_ms"] - r["server_ttft_ms"] for r in rows]
    return {"name": name, "n": len(rows), "overhead_med": median(overhead),
            "overhead_p95": pct(overhead, 95), "ttft_med": median([r["ttft_ms"] for r in rows]),
            "server_ttft_med": median([r["server_ttft_ms"] for r in rows]),
            "excess_med": median(excess), "excess_p95": pct(excess, 95),
            "wall_med": median([r["wall_ms"] for r in rows]),
            "request_leg_med": median([r["request_leg_ms"] for r in rows]),
            "response_leg_med": median([r["response_leg_ms"] for r in rows])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.harness_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="measured calls per contender")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--token-ms", type=float, default=0.5)
    parser.add_argument("--prompt-ms-per-token", type=float, default=0.01)
    parser.add_argument("--prompt-words", type=int, default=600, help="prompt size (~4 KB at 600)")
    parser.add_argument("--prefect", action="store_true",
                        help="also run tr111's generate inside a Prefect task (starts a temporary API)")
    parser.add_argument("--quiesce-ms", type=float, default=0.0,
                        help="with --prefect: sleep this long in the task before the call, so Prefect's "
                             "background threads finish the task-start burst (events, logs) first")
    args = parser.parse_args(argv)
    if args.prefect:
        isolated_prefect_home()  # before anything imports prefect

    import httpx

    from tr111.ollama.client import OllamaClient
    from tr111.fake_ollama.server import FakeOllama, FakeTimings

    timings = FakeTimings(load_ms=0.0, prompt_ms_per_token=args.prompt_ms_per_token,
                          token_ms=args.token_ms, tokens=args.tokens)
    prompt = " ".join(f"word{i % 97}" for i in range(args.prompt_words))
    body = {"model": MODEL, "prompt": prompt, "stream": True, "options": {"temperature": 0.6}}
    summaries = []
    with FakeOllama(timings) as fake, OllamaClient(fake.url) as ours, \
            httpx.Client(base_url=fake.url, timeout=60) as raw:
        contenders = {"raw httpx (control)": lambda b: raw_call(raw, b),
                      "tr111 OllamaClient": lambda b: tr111_call(ours, b)}
        samples = measure(contenders, fake, body, args.calls, args.warmup)
        summaries += [summarise(name, rows) for name, rows in samples.items()]
        if args.prefect:
            summaries += prefect_contenders(fake, ours, raw, body, args.calls, args.warmup,
                                            args.quiesce_ms / 1000)

    print(f"fake Ollama in-process: {args.tokens} tokens x {args.token_ms} ms, prompt "
          f"{len(prompt)} chars ({args.prompt_words + 1} tokens x {args.prompt_ms_per_token} ms); "
          f"{args.calls} calls per contender, alternating, after {args.warmup} warm-up")
    print(machine_line())
    print(f"{'contender':34s} {'overhead med':>12s} {'p95':>6s} {'TTFT med':>9s} {'server TTFT':>11s} "
          f"{'TTFT excess med':>15s} {'p95':>6s} {'wall med':>8s} {'req leg':>7s} {'resp leg':>8s}")
    for s in summaries:
        print(f"{s['name']:34s} {s['overhead_med']:12.3f} {s['overhead_p95']:6.3f} {s['ttft_med']:9.3f} "
              f"{s['server_ttft_med']:11.3f} {s['excess_med']:15.3f} {s['excess_p95']:6.3f} {s['wall_med']:8.2f} "
              f"{s['request_leg_med']:7.3f} {s['response_leg_med']:8.3f}")
    by_name = {s["name"]: s for s in summaries}
    ours_s, control = by_name["tr111 OllamaClient"], by_name["raw httpx (control)"]
    vs_control = ours_s["excess_med"] - control["excess_med"]
    print("(ms) overhead = wall_ms - total_duration_ms; TTFT excess = client TTFT - server's own time "
          "to first chunk; req leg = call start -> server received the request; resp leg = server "
          "sent the final chunk -> call returned")
    print(f"tr111 overhead median {ours_s['overhead_med']:.3f} ms (target <= 1); recorded TTFT excess - "
          f"raw control's: {vs_control:+.3f} ms (target <= 1)")
    if "tr111 in a Prefect task" in by_name:
        task_s, task_control = by_name["tr111 in a Prefect task"], by_name["raw httpx in the flow"]
        print(f"inside Prefect: overhead median {task_s['overhead_med']:.3f} ms; TTFT excess - raw "
              f"control's (same flow): {task_s['excess_med'] - task_control['excess_med']:+.3f} ms")
    print(reproduce_line("bench.harness_overhead", argv if argv is not None else sys.argv[1:]))
    return 0 if ours_s["overhead_med"] <= 1.0 and vs_control <= 1.0 else 1


def prefect_contenders(fake, ours, raw, body: dict, calls: int, warmup: int,
                       quiesce_s: float = 0.0) -> list[dict]:
    """tr111's generate inside a Prefect task, raw control in the same flow's body."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from prefect import flow, task
    from prefect.cache_policies import NONE
    from prefect.utilities.annotations import quote

    @task(name="llm-call", cache_policy=NONE, persist_result=False)
    def in_task(b: dict) -> dict:
        if quiesce_s:
            time.sleep(quiesce_s)
        return tr111_call(ours, b)

    @flow(name="harness-overhead", persist_result=False)
    def bench_flow() -> dict:
        contenders = {"raw httpx in the flow": lambda b: raw_call(raw, b),
                      "tr111 in a Prefect task": lambda b: in_task(quote(b))}
        return measure(contenders, fake, body, calls, warmup)

    samples = bench_flow()
    return [summarise(name, rows) for name, rows in samples.items()]


if __name__ == "__main__":
    sys.exit(main())
