"""TTFT error inside a real sweep, against the server's own log, with a raw-httpx control.

The fake Ollama runs in a child process and logs, per request, when it received the
request and when it sent its first chunk (``t_first_chunk_ns - t_received_ns``: the
server's own time to first chunk). A real ``tr111-sweep`` (Prefect flows, tasks,
retries, rows) runs against it twice: with the measurement worker (the default: the
timed call in a process of its own) and without (the call in the Prefect task's
thread). Then, on the same server, a bare httpx streaming loop is the control.

Error per call = recorded TTFT - the server's own time to first chunk. Targets
(issue 10): median(worker) within 0.3 ms of median(control); p95(worker) <= 2 ms.

    python -m bench.timer_in_sweep [--configs 5] [--runs 4] [--control-calls 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from bench._common import isolated_prefect_home, machine_line, median, pct, reproduce_line

NS_PER_MS = 1_000_000
TIMINGS = dict(load_ms=5.0, token_ms=1.0, tokens=16, prompt_ms_per_token=0.002, jitter_ms=0.0)


def _serve(conn) -> None:
    """The fake in its own process; on 'stop' it sends back (prompt, server TTFT ms) per generate."""
    from tr111.fake_ollama import FakeOllama, FakeTimings

    with FakeOllama(FakeTimings(**TIMINGS)) as fake:
        conn.send(fake.url)
        conn.recv()
        log = [(r["body"].get("prompt"), (r["t_first_chunk_ns"] - r["t_received_ns"]) / NS_PER_MS)
               for r in fake.requests
               if r["path"] == "/api/generate" and r.get("t_first_chunk_ns") and isinstance(r["body"], dict)
               and r["body"].get("prompt")]
    conn.send(log)


def _sweep(url: str, work: Path, name: str, matrix: Path, worker: bool,
           settle_ms: float = 0.0) -> list[tuple[str, float]]:
    from tr111.flows.sweep import tr111_sweep
    from tr111.warehouse import open_read_only

    os.environ["TR111_MEASUREMENT_WORKER"] = "true" if worker else "false"
    os.environ["TR111_WORKER_SETTLE_MS"] = str(settle_ms)
    wh = work / f"{name}.duckdb"
    result = tr111_sweep(matrix=str(matrix), ollama_url=url, warehouse=str(wh), out=str(work / "out"),
                         restart="none", report=False, sweep_id=name)
    assert result["status"] == "completed", result
    with open_read_only(wh) as con:
        return con.execute("SELECT prompt, ttft_ms FROM llm_calls WHERE status = 'ok'").fetchall()


def _control(url: str, prompts: list[str], model: str, gap_s: float = 0.0) -> list[tuple[str, float]]:
    """Bare httpx streaming calls; ``gap_s`` idles between calls as a sweep does between its calls."""
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for prompt in prompts:
            time.sleep(gap_s)
            body = {"model": model, "prompt": prompt, "stream": True, "options": {"num_predict": 16}}
            t0 = time.perf_counter_ns()
            ttft = None
            with client.stream("POST", "/api/generate", json=body) as response:
                for line in response.iter_lines():
                    now = time.perf_counter_ns()
                    if line and ttft is None and json.loads(line).get("response"):
                        ttft = (now - t0) / NS_PER_MS
            out.append((prompt, ttft))
    return out


def _errors(recorded: list[tuple[str, float]], server: dict[str, float]) -> list[float]:
    return [ttft - server[prompt] for prompt, ttft in recorded if prompt in server and ttft is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=5, help="num_ctx levels swept (plus the baseline)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--control-calls", type=int, default=60)
    parser.add_argument("--gap-ms", type=float, default=150.0,
                        help="idle time between the spaced control's calls (a sweep's calls are apart too)")
    parser.add_argument("--settle-ms", type=float, default=5.0,
                        help="the worker's pause before each timed call, for the third sweep")
    args = parser.parse_args(argv)
    isolated_prefect_home()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ["TR111_GPU_TELEMETRY"] = "false"
    work = Path(tempfile.mkdtemp(prefix="tr111-timer-"))
    matrix = work / "m.yaml"
    levels = ", ".join(str(1024 + 256 * i) for i in range(args.configs))
    matrix.write_text(f"model: gemma3:latest\nruns: {args.runs}\nbaseline: true\n"
                      f"grid: {{num_ctx: [{levels}]}}\noptions: {{num_predict: 16}}\nrestart: never\n",
                      encoding="utf-8")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    url = parent.recv()
    try:
        worker = _sweep(url, work, "timer-worker", matrix, worker=True)
        settled = _sweep(url, work, "timer-settle", matrix, worker=True, settle_ms=args.settle_ms)
        inproc = _sweep(url, work, "timer-inprocess", matrix, worker=False)
        prompts = [p for p, _ in worker][: args.control_calls]
        control = _control(url, [p.replace("timer-worker", "timer-control") for p in prompts], "gemma3:latest")
        spaced = _control(url, [p.replace("timer-worker", "timer-spaced") for p in prompts], "gemma3:latest",
                          gap_s=args.gap_ms / 1000.0)
    finally:
        parent.send("stop")
        server = dict(parent.recv())
        proc.join(10)
    rows = {"sweep, measurement worker": _errors(worker, server),
            f"sweep, worker, {args.settle_ms:g} ms settle": _errors(settled, server),
            "sweep, call in the Prefect task": _errors(inproc, server),
            "raw httpx control (same server)": _errors(control, server),
            f"raw httpx, {args.gap_ms:g} ms idle between calls": _errors(spaced, server)}
    print(machine_line())
    print(f"TTFT error = recorded TTFT - the fake server's own time to first chunk (ms); "
          f"{args.configs + 1} configs x {args.runs} runs x 2 calls per sweep")
    print(f"{'':36} {'n':>4} {'median':>8} {'p95':>8} {'max':>8}")
    for label, values in rows.items():
        print(f"{label:36} {len(values):4d} {median(values):8.3f} {pct(values, 95):8.3f} {max(values):8.3f}")
    gap = median(rows["sweep, measurement worker"]) - median(rows["raw httpx control (same server)"])
    print(f"worker median - control median: {gap:+.3f} ms (target <= 0.3); "
          f"worker p95: {pct(rows['sweep, measurement worker'], 95):.3f} ms (target <= 2)")
    print(reproduce_line("bench.timer_in_sweep", argv or []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
