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

* ``current``: flows/ as they are: run subflows without a heartbeat thread, and the sweep
  waits until a local API has recorded each finished subflow's task runs
  (flows/prefect_tuning.py; docs/performance.md, section 2);
* ``before``: the design before that change, rebuilt by patching both work-arounds out of
  flows.sweep: every subflow joins its heartbeat thread at teardown (up to 1 s per run);
* ``no-wait``: heartbeat off but no wait: the next subflow's tracking task run races the
  server's task-run recorder, gets SQLite "database is locked" (HTTP 503) and Prefect's
  client retries after 2 s;
* ``inline`` (for comparison only): the run's tasks called straight from the sweep flow
  (``tr111_run.fn``), no subflow -- the floor of Prefect's cost, but the runs no longer
  show as DAGs of their own (one graph of 57 chains).

APIs: ``server`` (default; ``prefect server start`` with SQLite in a temp
PREFECT_HOME, what users run), ``harness`` (prefect_test_harness, as the tests),
``ephemeral`` (what ``tr111 sweep`` starts when PREFECT_API_URL is unset), or an
API URL.

    python -m bench.orchestration_overhead [--api server|harness|ephemeral|URL]
        [--variants before,current,no-wait,inline] [--matrix tr111] [--runs N]
        [--num-predict 4] [--token-ms 0.05]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from bench._common import (cpu_seconds_self, fake_ollama_process, isolated_prefect_home, machine_line,
                           median, pct, prefect_server, reproduce_line)
from tr111.paths import matrix_path

TARGET_MS = 30.0


class _InlineState:
    """What the sweep reads from a subflow's state, for the inline variant (no flow run)."""

    class state_details:  # noqa: N801 - mirrors State.state_details
        flow_run_id = None

    def __init__(self, row: dict) -> None:
        self._row = row

    def result(self) -> dict:
        return self._row


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

    import tr111.flows.sweep as sweep_module
    from tr111 import progress

    patched = {"tr111_run": sweep_module.tr111_run, "wait_until_recorded": sweep_module.wait_until_recorded,
               "subflows_without_heartbeat": sweep_module.subflows_without_heartbeat}
    if variant in ("before", "no-wait"):
        sweep_module.wait_until_recorded = lambda *args, **kwargs: None
    if variant == "before":
        sweep_module.subflows_without_heartbeat = contextlib.nullcontext
    if variant == "inline":  # the run's five tasks straight in the sweep flow: no subflow
        run_fn = patched["tr111_run"].fn

        def inline(*args, return_state: bool = False, **kwargs):
            row = run_fn(*map(_unquote, args), **{k: _unquote(v) for k, v in kwargs.items()})
            return _InlineState(row) if return_state else row

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
        unsubscribe()
        for name, value in patched.items():
            setattr(sweep_module, name, value)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT total_ms, coalesce(restart_ms, 0) + coalesce(ingest_ms, 0) + coalesce(warmup_ms, 0)"
            " + coalesce(analysis_ms, 0) + coalesce(report_ms, 0), status, ingest_cached FROM runs"
            " WHERE sweep_id = ? ORDER BY started_at", [f"bench-{variant}"]).fetchall()
    inside = [total - stages for total, stages, *_ in rows]
    totals = [total for total, *_ in rows]
    start = next(t for t, event in marks if event == "start")
    ends = [t for t, event in marks if event == "run"]
    cycles = [(b - a) / 1e6 for a, b in zip([start] + ends[:-1], ends)]
    around = [c - t for c, t in zip(cycles, totals)]
    return {"variant": variant, "status": result["status"], "runs": len(rows),
            "failed": sum(1 for _, _, s, _ in rows if s != "ok"), "inside": inside, "around": around,
            "cached": sum(1 for *_, c in rows if c),
            "cycles": cycles, "totals": totals, "wall_ms": wall_ms, "cpu_s": cpu_s,
            "loop_ms": (ends[-1] - start) / 1e6 if ends else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.orchestration_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="server",
                        help="server (default) | harness | ephemeral | an API URL")
    parser.add_argument("--variants", default="before,current",
                        help="comma-separated: before, current, no-wait, inline (default: before,current)")
    parser.add_argument("--matrix", type=matrix_path, default="tr111",
                        help="matrix file or built-in name (default: tr111)")
    parser.add_argument("--runs", type=int, help="override runs per config (default: the matrix's)")
    parser.add_argument("--num-predict", type=int, default=4)
    parser.add_argument("--token-ms", type=float, default=0.05)
    parser.add_argument("--load-ms", type=float, default=1.0)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the sweeps (main thread) into FILE")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(variants) - {"before", "current", "no-wait", "inline"}:
        parser.error("variants are: before, current, no-wait, inline")

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
            import tr111.flows.sweep  # noqa: F401 - import cost (Prefect: seconds) outside the timings

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
              f"{r['loop_ms'] / total:8.2f} {r['cpu_s']:6.1f}  (ingest cached in {r['cached']} runs)"
              + (f"  ({r['failed']} failed runs!)" if r["failed"] else ""))
    print("(ms; inside = total_ms - sum(stage ms), target <= "
          f"{TARGET_MS:g} ms median; around = run-to-run cycle - total_ms: subflow create/teardown + record)")
    print(reproduce_line("bench.orchestration_overhead", argv if argv is not None else sys.argv[1:]))
    judged = [r for r in results if r["variant"] == "current"] or results
    ok = all(median(r["inside"]) <= TARGET_MS and r["failed"] == 0 for r in judged)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
