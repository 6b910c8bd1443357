"""End-to-end proof of the fleet-sweep test infrastructure (tests/fleet_support.py).

PostgreSQL -> ``prefect server start`` on it -> a process work pool with one queue per stand-in
host plus a shared ``split`` queue -> two process workers (host-a, host-b) -> 8 runs of the tiny
``fleet-demo`` flow (tests/fleet_demo_flow.py), deployed from this checkout.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import time
from pathlib import Path

import pytest

from fleet_support import (REPO, create_pool_and_queues, postgres_cluster, prefect_api,
                           prefect_server, start_worker, stop_worker)

pytestmark = pytest.mark.slow

POOL = "fleet-test"
DEPLOYMENT = "fleet-demo-infra"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def test_postgres_cluster_lifecycle():
    import asyncio

    import asyncpg

    with postgres_cluster() as pg:
        root, port = pg.root, pg.port
        assert pg.url.startswith("postgresql+asyncpg://prefect:")
        assert root.is_dir()

        async def query():
            conn = await asyncpg.connect(user=pg.user, password=pg.password, host=pg.host,
                                         port=pg.port, database=pg.dbname)
            try:
                return await conn.fetchval("select current_database()")
            finally:
                await conn.close()

        assert asyncio.run(query()) == "prefect"
        print(f"\n[fleet] postgres cluster ready in {pg.startup_seconds:.2f} s")
    assert not root.exists()
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect(("127.0.0.1", port))


def test_postgres_cluster_skips_without_postgresql(monkeypatch):
    import fleet_support

    monkeypatch.setattr(fleet_support, "find_pg_bindir", lambda: None)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL is not installed"):
        with fleet_support.postgres_cluster():
            pass


def _read_intervals(path: Path) -> list[tuple[str, float, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        host, start, end, label, _pid = line.split("\t")
        rows.append((host, float(start), float(end), label))
    return rows


def measure_two_workers_share_a_pool(tmp_path):
    """Not a test (no ``test_`` prefix): ``python -m bench.fleet_dispatch`` runs it and prints
    the dispatch overhead. tests/test_fleet_e2e.py covers the same plumbing with tr111's flows."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    from fleet_demo_flow import fleet_demo

    out = tmp_path / "runs.tsv"
    workers = {}
    with postgres_cluster() as pg, prefect_server(pg.url) as srv:
        print(f"\n[fleet] postgres {pg.startup_seconds:.2f} s, "
              f"prefect server healthy {srv.startup_seconds:.2f} s after start")
        try:
            create_pool_and_queues(srv.api_url, POOL,
                                   {"host-a": 1, "host-b": 1, "split": None})
            # workers first: their start-up (~5 s of imports) overlaps the deployment
            workers["host-a"] = start_worker(srv.api_url, POOL, ["host-a", "split"], "host-a",
                                             prefect_home=tmp_path / "home-a")
            workers["host-b"] = start_worker(srv.api_url, POOL, ["host-b", "split"], "host-b",
                                             prefect_home=tmp_path / "home-b")
            with prefect_api(srv.api_url):
                dep_id = fleet_demo.from_source(
                    source=str(REPO), entrypoint="tests/fleet_demo_flow.py:fleet_demo",
                ).deploy(name=DEPLOYMENT, work_pool_name=POOL, build=False, push=False,
                         print_next_steps=False, ignore_warnings=True)
                with get_client(sync_client=True) as client:
                    dep = client.read_deployment(dep_id)
                    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                               {"directory": str(REPO)}}]
                    # wait until both workers have heartbeated (ONLINE): dispatch measures
                    # steady state, not the workers' start-up
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        online = {w.name for w in client.read_workers_for_work_pool(POOL)
                                  if str(getattr(w.status, "value", w.status)) == "ONLINE"}
                        if {"host-a", "host-b"} <= online:
                            break
                        time.sleep(0.5)
                    else:
                        pytest.fail(f"workers not ONLINE after 60 s: {online}")

                submitted: dict[str, tuple[float, str]] = {}   # flow run id -> (time, label)
                plan = [("split", i) for i in range(4)] + [("host-a", i) for i in range(2)] + \
                       [("host-b", i) for i in range(2)]
                for queue, i in plan:
                    t = time.time()
                    fr = run_deployment(f"fleet-demo/{DEPLOYMENT}", timeout=0,
                                        work_queue_name=queue,
                                        parameters={"out_path": str(out),
                                                    "label": f"{queue}-{i}", "seconds": 1.0})
                    submitted[str(fr.id)] = (t, f"{queue}-{i}")
                submit_spread = max(t for t, _ in submitted.values()) - \
                    min(t for t, _ in submitted.values())

                with get_client(sync_client=True) as client:
                    deadline = time.monotonic() + 150
                    while True:
                        runs = {rid: client.read_flow_run(rid) for rid in submitted}
                        states = {rid: r.state.type.value for rid, r in runs.items()}
                        if all(s in FINAL for s in states.values()):
                            break
                        if time.monotonic() > deadline:
                            pytest.fail(f"runs not final after 150 s: {states}")
                        time.sleep(1)
                    all_done = time.time()
                    # submit -> Running, from the server's state history
                    running_at: dict[str, float] = {}   # label -> first RUNNING timestamp
                    pending_at: dict[str, float] = {}   # label -> first PENDING timestamp
                    to_running, to_pending = [], []
                    for rid, (t_sub, label) in submitted.items():
                        hist = client.read_flow_run_states(rid)
                        running = [s.timestamp.timestamp() for s in hist
                                   if s.type.value == "RUNNING"]
                        pending = [s.timestamp.timestamp() for s in hist
                                   if s.type.value == "PENDING"]
                        if running:
                            running_at[label] = min(running)
                            to_running.append(min(running) - t_sub)
                        if pending:
                            pending_at[label] = min(pending)
                            to_pending.append(min(pending) - t_sub)
        finally:
            stop_seconds = {}
            for host, proc in workers.items():
                t = time.monotonic()
                stop_worker(proc)
                stop_seconds[host] = time.monotonic() - t
            if any(p.returncode not in (0, None) for p in workers.values()) or \
                    not out.exists():
                for host, proc in workers.items():
                    with contextlib.suppress(OSError):
                        print(f"--- worker {host} log:\n{proc.log_path.read_text()[-3000:]}")

    assert all(s == "COMPLETED" for s in states.values()), states
    rows = _read_intervals(out)
    assert len(rows) == len(plan)
    by_label = {label: host for host, _s, _e, label in rows}
    for label, host in by_label.items():  # host queues reach only their own host
        if not label.startswith("split"):
            assert label.startswith(host), (label, host)
    for host in ("host-a", "host-b"):
        spans = sorted((s, e) for h, s, e, _l in rows if h == host)
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"{host} ran two flow runs at once: {(s1, e1)} and {(s2, e2)}"
    split_hosts = {by_label[f"split-{i}"] for i in range(4)}
    span = all_done - min(t for t, _ in submitted.values())
    print(f"[fleet] {len(plan)} runs submitted in {submit_spread:.2f} s, all final "
          f"{span:.1f} s after the first submit")
    print(f"[fleet] submit -> Pending median {statistics.median(to_pending):.2f} s, "
          f"submit -> Running median {statistics.median(to_running):.2f} s "
          f"(min {min(to_running):.2f}, max {max(to_running):.2f}; includes queueing "
          f"behind the one-at-a-time limit)")
    first_per_host = []
    for host in ("host-a", "host-b"):
        first_per_host.append(min(s for h, s, _e, _l in rows if h == host)
                              - min(t for t, _ in submitted.values()))
    print(f"[fleet] first submit -> first flow code start per host: "
          f"{', '.join(f'{x:.2f} s' for x in first_per_host)}")
    print(f"[fleet] split runs went to {sorted(split_hosts)}; per host: "
          f"{ {h: sum(1 for r in rows if r[0] == h) for h in ('host-a', 'host-b')} }")
    # dispatch overhead proper: from the moment the host was free for the run (submitted and
    # the host's previous run finished) to Running, and to the flow's own code starting
    submit_at = {label: t for t, label in submitted.values()}
    free_to_running, free_to_code, free_to_pending = [], [], []
    for host in ("host-a", "host-b"):
        prev_end = 0.0
        for h, s, e, label in sorted(r for r in rows if r[0] == host):
            ready = max(submit_at[label], prev_end)
            free_to_running.append(running_at[label] - ready)
            free_to_pending.append(pending_at[label] - ready)
            free_to_code.append(s - ready)
            prev_end = e
    print(f"[fleet] host free -> Pending (worker picked it up) median "
          f"{statistics.median(free_to_pending):.2f} s; Pending -> Running is the new "
          f"flow-run Python process")
    print(f"[fleet] dispatch overhead (host free -> Running) median "
          f"{statistics.median(free_to_running):.2f} s (max {max(free_to_running):.2f}); "
          f"host free -> flow code start median {statistics.median(free_to_code):.2f} s "
          f"(max {max(free_to_code):.2f})")
    print(f"[fleet] worker stop took {', '.join(f'{h} {s:.2f} s' for h, s in stop_seconds.items())}")
    assert all(s < 40 for s in stop_seconds.values())
