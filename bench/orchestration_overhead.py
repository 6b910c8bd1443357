"""Orchestration overhead of tr111-sweep: what Prefect adds around each run.

Runs the real ``tr111-sweep`` flow (every run a ``tr111-run`` subflow of five tasks)
on ``sweeps/tr111.yaml``'s 57 runs against a fast fake Ollama (in its own process)
and reads the figures back from the warehouse and from tr111's progress events:

* per run, inside the subflow: ``runs.total_ms - (restart + ingest + [warmup] +
  analysis + report)`` -- the tasks' own Prefect cost (target <= 30 ms, median);
* per run, around the subflow: time between two consecutive runs finishing in the
  sweep loop minus ``total_ms`` -- creating the subflow, its states, its teardown
  (heartbeat thread join) and the ``record`` task;
* per sweep: sweep wall time / sum of ``total_ms``.

Variants (run one after another in this process, against the same Prefect API):

* ``current``: flows/ as they are;
* ``fix``: the proposed design, applied here by wrapping ``flows.sweep.tr111_run``
  (see ``settled_run`` below and docs/performance.md): the run subflows start
  without a heartbeat thread (the sweep flow keeps its own), and the sweep waits
  until the Prefect API has recorded the finished subflow's task runs before
  starting the next one -- else the next subflow's tracking task run hits SQLite
  "database is locked" (HTTP 503) and Prefect's client retries after 2 s;
* ``inline`` (for comparison only): the run's tasks called straight from the sweep flow
  (``tr111_run.fn``), no subflow -- the floor of Prefect's cost, but the runs no longer
  show as DAGs of their own (one graph of 57 chains).

APIs: ``server`` (default; ``prefect server start`` with SQLite in a temp
PREFECT_HOME, what users run), ``harness`` (prefect_test_harness, as the tests),
``ephemeral`` (what ``tr111 sweep`` starts when PREFECT_API_URL is unset), or an
API URL.

    python bench/orchestration_overhead.py [--api server] [--variants current,fix]
        [--matrix sweeps/tr111.yaml] [--runs N] [--num-predict 4] [--token-ms 0.05]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (REPO_ROOT, cpu_seconds_self, fake_ollama_process,  # noqa: E402
                           isolated_prefect_home, machine_line, median, pct, prefect_server,
                           reproduce_line)

TARGET_MS = 30.0


def settled_run(original, stack: contextlib.ExitStack, *, timeout_s: float = 2.0):
    """The proposed design, as a wrapper around ``tr111_run`` (see the module docstring).

    ``temporary_settings`` costs ~0.2 s (it re-validates every Prefect setting), so it is
    entered once, at the first run, and left when the sweep ends (``stack``); the sweep
    flow's own heartbeat thread, started before, keeps running.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    entered: list[bool] = []

    def run(plan, key, **kwargs):
        if not entered:  # first run of this sweep
            stack.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
            entered.append(True)
        state = original(plan, key, return_state=True, **kwargs)
        warmup = _unquote(plan).warmup
        wait_until_recorded(state.state_details.flow_run_id, 5 + (1 if warmup else 0), timeout_s)
        return state.result()

    def wait_until_recorded(flow_run_id, expected: int, timeout_s: float) -> None:
        """Until the API shows the subflow's task runs final: its task-run recorder is done."""
        client = get_client(sync_client=True)  # the sweep flow's own client (its run context)
        flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        deadline, previous = time.monotonic() + timeout_s, -1
        while time.monotonic() < deadline:
            task_runs = client.read_task_runs(flow_run_filter=flow_filter)
            final = all(t.state is not None and t.state.is_final() for t in task_runs)
            if final and (len(task_runs) >= expected or len(task_runs) == previous):
                return
            previous = len(task_runs) if final else -1
            time.sleep(0.01)

    return run


def _unquote(value):
    """flows/sweep.py passes quote()d arguments to the run subflow."""
    return value.unquote() if hasattr(value, "unquote") else value


def _flush_prefect_logs() -> None:
    """Send queued run logs before the API goes away (else: 'Error logging to API')."""
    try:
        from prefect.logging.handlers import APILogHandler

        APILogHandler.flush()
    except Exception:  # noqa: BLE001 - best effort
        pass


def write_matrix(source: Path, runs: int | None, num_predict: int, folder: Path) -> Path:
    import yaml

    matrix = yaml.safe_load(source.read_text())
    matrix["options"] = {**(matrix.get("options") or {}), "num_predict": num_predict}
    if runs:
        matrix["runs"] = runs
    out = folder / "matrix.yaml"
    out.write_text(yaml.safe_dump(matrix))
    return out


def one_sweep(variant: str, matrix: Path, url: str, folder: Path) -> dict:
    import duckdb

    import flows.sweep as sweep_module
    from tr111 import progress

    original = sweep_module.tr111_run
    stack = contextlib.ExitStack()
    if variant == "fix":
        sweep_module.tr111_run = settled_run(original, stack)
    elif variant == "inline":  # the run's five tasks straight in the sweep flow: no subflow
        def inline(*args, **kwargs):
            return original.fn(*map(_unquote, args), **{k: _unquote(v) for k, v in kwargs.items()})

        sweep_module.tr111_run = inline
    marks: list[tuple[int, str]] = []
    unsubscribe = progress.subscribe(lambda event, data: marks.append((time.perf_counter_ns(), event)))
    warehouse = folder / f"{variant}.duckdb"
    try:
        t0, c0 = time.perf_counter_ns(), cpu_seconds_self()
        result = sweep_module.tr111_sweep(matrix=str(matrix), ollama_url=url, restart="unload",
                                          warehouse=str(warehouse), out=str(folder / "reports"),
                                          report=False, sweep_id=f"bench-{variant}")
        wall_ms, cpu_s = (time.perf_counter_ns() - t0) / 1e6, cpu_seconds_self() - c0
    finally:
        stack.close()
        unsubscribe()
        sweep_module.tr111_run = original
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT total_ms, coalesce(restart_ms, 0) + coalesce(ingest_ms, 0) + coalesce(warmup_ms, 0)"
            " + coalesce(analysis_ms, 0) + coalesce(report_ms, 0), status FROM runs"
            " WHERE sweep_id = ? ORDER BY started_at", [f"bench-{variant}"]).fetchall()
    inside = [total - stages for total, stages, _ in rows]
    totals = [total for total, _, _ in rows]
    start = next(t for t, event in marks if event == "start")
    ends = [t for t, event in marks if event == "run"]
    cycles = [(b - a) / 1e6 for a, b in zip([start] + ends[:-1], ends)]
    around = [c - t for c, t in zip(cycles, totals)]
    return {"variant": variant, "status": result["status"], "runs": len(rows),
            "failed": sum(1 for *_, s in rows if s != "ok"), "inside": inside, "around": around,
            "cycles": cycles, "totals": totals, "wall_ms": wall_ms, "cpu_s": cpu_s,
            "loop_ms": (ends[-1] - start) / 1e6 if ends else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="server",
                        help="server (default) | harness | ephemeral | an API URL")
    parser.add_argument("--variants", default="current,fix",
                        help="comma-separated: current, fix, inline (default: current,fix)")
    parser.add_argument("--matrix", type=Path, default=REPO_ROOT / "sweeps" / "tr111.yaml")
    parser.add_argument("--runs", type=int, help="override runs per config (default: the matrix's)")
    parser.add_argument("--num-predict", type=int, default=4)
    parser.add_argument("--token-ms", type=float, default=0.05)
    parser.add_argument("--load-ms", type=float, default=1.0)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the sweeps (main thread) into FILE")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(variants) - {"current", "fix", "inline"}:
        parser.error("variants are: current, fix, inline")

    if args.api == "server":
        api_context = prefect_server()
    elif args.api in ("harness", "ephemeral"):
        isolated_prefect_home()
        api_context = contextlib.nullcontext()
    else:
        isolated_prefect_home()
        os.environ["PREFECT_API_URL"] = args.api
        api_context = contextlib.nullcontext()
    os.environ["TR111_GPU_TELEMETRY"] = "false"

    results = []
    with tempfile.TemporaryDirectory(prefix="tr111-orch-") as scratch, api_context, \
            fake_ollama_process(token_ms=args.token_ms, tokens=args.num_predict, load_ms=args.load_ms) as url:
        folder = Path(scratch)
        matrix = write_matrix(args.matrix, args.runs, args.num_predict, folder)
        harness = contextlib.nullcontext()
        if args.api == "harness":
            from prefect.testing.utilities import prefect_test_harness

            harness = prefect_test_harness(server_startup_timeout=180)
        with harness:
            import flows.sweep  # noqa: F401 - import cost (Prefect: seconds) outside the timings

            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            for variant in variants:
                results.append(one_sweep(variant, matrix, url, folder))
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            _flush_prefect_logs()

    print(f"tr111-sweep on {args.matrix.name} (num_predict {args.num_predict}, fake token_ms "
          f"{args.token_ms}), Prefect API: {args.api}")
    print(machine_line())
    print(f"{'variant':8s} {'runs':>4s} {'inside med':>10s} {'p95':>6s} {'around med':>10s} {'p95':>7s} "
          f"{'run total':>9s} {'cycle':>7s} {'sweep wall':>10s} {'wall/sum':>8s} {'loop/sum':>8s} {'cpu s':>6s}")
    for r in results:
        total = sum(r["totals"])
        print(f"{r['variant']:8s} {r['runs']:4d} {median(r['inside']):10.1f} {pct(r['inside'], 95):6.1f} "
              f"{median(r['around']):10.1f} {pct(r['around'], 95):7.1f} {median(r['totals']):9.1f} "
              f"{median(r['cycles']):7.1f} {r['wall_ms'] / 1000:10.1f} {r['wall_ms'] / total:8.2f} "
              f"{r['loop_ms'] / total:8.2f} {r['cpu_s']:6.1f}"
              + (f"  ({r['failed']} failed runs!)" if r["failed"] else ""))
    print("(ms; inside = total_ms - sum(stage ms), target <= "
          f"{TARGET_MS:g} ms median; around = run-to-run cycle - total_ms: subflow create/teardown + record)")
    print(reproduce_line("bench/orchestration_overhead.py", argv if argv is not None else sys.argv[1:]))
    ok = all(median(r["inside"]) <= TARGET_MS and r["failed"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
