"""TTFT error inside a real sweep, against the server's own log, with a raw-httpx control.

The fake Ollama runs in a child process and logs, per request, when it received the
request and when it sent its first chunk (``t_first_chunk_ns - t_received_ns``: the
server's own time to first chunk). A real ``tr111-sweep`` (Prefect flows, tasks,
retries, rows) runs against it: with the measurement worker (the default: the timed call
in a process of its own), CPU-pinned (TR111_PIN_CPUS=auto: the worker -- and, with
--server-cpu measure, the fake -- on one core, the orchestrator and Prefect's ephemeral
server on the others) and not pinned (TR111_PIN_CPUS=off), ``--pairs`` times alternately;
then once without the worker (the call in the Prefect task's thread). Then, on the same
server, two controls: a bare httpx streaming loop stamped around httpx (the issue's control), and
tr111's own client in a bare loop (the same socket-level stamps as a sweep, without the sweep).

Error per call = recorded TTFT - the server's own time to first chunk. Targets
(issue 10): median(worker) within 0.3 ms of median(control); p95(worker) <= 2 ms.

    python -m bench.timer_in_sweep [--configs 5] [--runs 4] [--pairs 1] [--server-cpu measure]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
           settle_ms: float = 0.0, pin: str = "off") -> list[tuple[str, float]]:
    from tr111.flows.sweep import tr111_sweep
    from tr111.warehouse import open_read_only

    os.environ["TR111_MEASUREMENT_WORKER"] = "true" if worker else "false"
    os.environ["TR111_WORKER_SETTLE_MS"] = str(settle_ms)
    os.environ["TR111_PIN_CPUS"] = pin
    wh = work / f"{name}.duckdb"
    result = tr111_sweep(matrix=str(matrix), ollama_url=url, warehouse=str(wh), out=str(work / "out"),
                         restart="none", report=False, sweep_id=name)
    assert result["status"] == "completed", result
    with open_read_only(wh) as con:
        return con.execute("SELECT prompt, ttft_ms FROM llm_calls WHERE status = 'ok'").fetchall()


def _control_wire(url: str, prompts: list[str], model: str, gap_s: float = 0.0) -> list[tuple[str, float]]:
    """tr111's own client (stamps at the socket) in a bare loop: no sweep, no worker, no Prefect."""
    from tr111.ollama.client import OllamaClient

    out = []
    with OllamaClient(url) as client:
        for prompt in prompts:
            time.sleep(gap_s)
            out.append((prompt, client.generate(model, prompt, {"num_predict": 16}).ttft_ms))
    return out


def _control(url: str, prompts: list[str], model: str, gap_s: float = 0.0) -> list[tuple[str, float]]:
    """Bare httpx streaming calls, stamped around httpx (before ``stream``, at each line);
    ``gap_s`` idles between calls as a sweep does between its calls."""
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


@contextmanager
def _pinned_server(pid: int, pin: str, where: str) -> Iterator[str]:
    """The fake (started by this script, as tr111 starts its embedded engine) onto the worker's
    core (``measure``), the orchestrator's (``rest``) or left alone (``any``) while a pinned
    sweep runs; put back afterwards. Yields where it went, in words."""
    from tr111.run.worker import pin_process, plan_pinning, unpin_process

    plan = plan_pinning(pin)
    if plan is None or where == "any":
        yield "fake server not pinned"
        return
    cpus = plan.measure if where == "measure" else plan.rest
    saved = pin_process(pid, cpus)
    try:
        yield f"fake server on CPU {','.join(map(str, sorted(cpus)))}"
    finally:
        unpin_process(pid, saved)


@contextmanager
def _pinned_self(cpus: frozenset[int] | None) -> Iterator[None]:
    """This process (the control's client) on ``cpus`` for a while."""
    from tr111.run.worker import pin_process, unpin_process

    saved = pin_process(os.getpid(), cpus) if cpus else {}
    try:
        yield
    finally:
        if saved:
            unpin_process(os.getpid(), saved)


def _errors(recorded: list[tuple[str, float]], server: dict[str, float]) -> list[float]:
    return [ttft - server[prompt] for prompt, ttft in recorded if prompt in server and ttft is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=5, help="num_ctx levels swept (plus the baseline)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--control-calls", type=int, default=60)
    parser.add_argument("--gap-ms", type=float, default=150.0,
                        help="idle time between the spaced control's calls (a sweep's calls are apart too)")
    parser.add_argument("--settle-ms", type=float, default=0.0,
                        help="with > 0: one more sweep, the worker pausing this long before each call")
    parser.add_argument("--pairs", type=int, default=1,
                        help="pinned / not pinned worker sweeps, alternately, this many times each")
    parser.add_argument("--server-cpu", choices=("measure", "rest", "any"), default="measure",
                        help="where a pinned sweep puts the fake server: the worker's core, the others, unpinned")
    args = parser.parse_args(argv)
    isolated_prefect_home()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ["TR111_GPU_TELEMETRY"] = "false"
    from tr111.run.worker import plan_pinning

    plan = plan_pinning("auto")
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
    pinned: list[tuple[str, float]] = []
    unpinned: list[tuple[str, float]] = []
    settled: list[tuple[str, float]] = []
    seen: list[str] = []
    from tr111 import progress

    unsubscribe = progress.subscribe(lambda event, data: seen.append(data["status"])
                                     if event == "cpu_pinning" else None)
    placed = "fake server not pinned"
    try:
        for i in range(args.pairs):
            with _pinned_server(proc.pid, "auto", args.server_cpu) as placed:
                pinned += _sweep(url, work, f"timer-worker-pinned-{i}", matrix, worker=True, pin="auto")
            unpinned += _sweep(url, work, f"timer-worker-{i}", matrix, worker=True, pin="off")
        if args.settle_ms > 0:
            settled = _sweep(url, work, "timer-settle", matrix, worker=True, settle_ms=args.settle_ms, pin="off")
        inproc = _sweep(url, work, "timer-inprocess", matrix, worker=False)
        prompts = [p for p, _ in unpinned][: args.control_calls]
        control = _control(url, [p.replace("timer-worker", "timer-control") for p in prompts], "gemma3:latest")
        spaced = _control(url, [p.replace("timer-worker", "timer-spaced") for p in prompts], "gemma3:latest",
                          gap_s=args.gap_ms / 1000.0)
        wire = _control_wire(url, [p.replace("timer-worker", "timer-wire") for p in prompts], "gemma3:latest")
        wire_spaced = _control_wire(url, [p.replace("timer-worker", "timer-wirespaced") for p in prompts],
                                    "gemma3:latest", gap_s=args.gap_ms / 1000.0)
        with _pinned_server(proc.pid, "auto", args.server_cpu), _pinned_self(plan and plan.measure):
            control_pinned = _control(url, [p.replace("timer-worker", "timer-ctlpin") for p in prompts],
                                      "gemma3:latest") if plan else []
    finally:
        unsubscribe()
        parent.send("stop")
        server = dict(parent.recv())
        proc.join(10)
    rows = {"sweep, worker, CPU-pinned": _errors(pinned, server),
            "sweep, worker, not pinned": _errors(unpinned, server)}
    if settled:
        rows[f"sweep, worker, {args.settle_ms:g} ms settle"] = _errors(settled, server)
    rows.update({"sweep, call in the Prefect task": _errors(inproc, server),
                 "raw httpx control (same server)": _errors(control, server),
                 f"raw httpx, {args.gap_ms:g} ms idle between calls": _errors(spaced, server)})
    if control_pinned:
        rows["raw httpx, pinned like the worker"] = _errors(control_pinned, server)
    rows.update({"tr111 client, bare loop (control)": _errors(wire, server),
                 f"tr111 client, bare, {args.gap_ms:g} ms idle": _errors(wire_spaced, server)})
    print(machine_line())
    print(f"TTFT error = recorded TTFT - the fake server's own time to first chunk (ms); "
          f"{args.configs + 1} configs x {args.runs} runs x 2 calls per sweep, {args.pairs} pinned/unpinned pair(s)")
    for status in dict.fromkeys(seen):
        print(f"pinning reported by a sweep: {status}")
    print(f"pinned sweeps: {placed}")
    print(f"{'':36} {'n':>4} {'median':>8} {'p95':>8} {'max':>8}")
    for label, values in rows.items():
        print(f"{label:36} {len(values):4d} {median(values):8.3f} {pct(values, 95):8.3f} "
              f"{max(values, default=math.nan):8.3f}")
    floor = median(rows["raw httpx control (same server)"])
    same_clock = median(rows["tr111 client, bare loop (control)"])
    for label in ("sweep, worker, CPU-pinned", "sweep, worker, not pinned"):
        values = rows[label]
        print(f"{label}: median - raw httpx control {median(values) - floor:+.3f} ms, "
              f"- tr111 client bare {median(values) - same_clock:+.3f} ms (target <= 0.3); "
              f"p95 {pct(values, 95):.3f} ms (target <= 2)")
    print(reproduce_line("bench.timer_in_sweep", argv or []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
