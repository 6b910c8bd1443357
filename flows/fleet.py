"""Fleet flows: ``tr111-fleet`` (the coordinator) fans a sweep out to ``tr111-fleet-config`` runs,
one per config, on the hosts' work queues (docs/fleet.md).

Prefect does the scheduling: a process work pool ``tr111-fleet``, a queue per host
(``host-<id>``, concurrency 1) plus a shared ``split`` queue, one worker per host with
``--limit 1`` (so a host never serves two configs at once), the coordinator on ``control``.
Rows travel as shards in the shared folder, never as Prefect results; the coordinator merges
them (tr111.fleet.coordinator). Every decision lives in tr111.fleet; these flows compose.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from tr111.errors import ConfigError
from tr111.flows.prefect_tuning import subflows_without_heartbeat, wait_until_recorded
from tr111.flows.run import task_count, tr111_run
from tr111.fleet import coordinator, plan as fleet_plan
from tr111.matrix import expand, parse_matrix
from tr111.run import sweep
from tr111.run.context import open_sweep
from tr111.run.environment import detect_environment
from tr111.run.lease import SweepLease
from tr111.run.plan import SweepRequest
from tr111.settings import Settings
from tr111.warehouse import writer


def _job_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"{params.get('config_id')}@{os.environ.get('HOST_ID') or socket.gethostname()}"


@flow(name="tr111-fleet-config", flow_run_name=_job_name, persist_result=False)
def tr111_fleet_config(sweep_id: str, config_id: str, run_numbers: list[int], run_attempts: dict,
                       call_attempts: dict, matrix: dict, shared_dir: str, corpus: str | None = None,
                       ollama_url: str | None = None, engine: str | None = None,
                       expected_host: str | None = None) -> dict:
    """On a host: one config's runs in order against this host's server; rows as shards."""
    host_id = os.environ.get("HOST_ID") or socket.gethostname()
    if expected_host and expected_host != host_id:
        raise ConfigError(f"job for host {expected_host} ran on {host_id}: check the workers' queues")
    shared = Path(shared_dir)
    settings = Settings.build(ollama_url=ollama_url, engine=engine, corpus_dir=corpus,
                              warehouse_path=shared / "coordinator-only.duckdb")  # never opened here
    parsed = parse_matrix(matrix, source="fleet matrix")
    request = SweepRequest(parsed, expand(parsed), sweep_id)
    config = next((c for c in request.configs if c.config_id == config_id), None)
    if config is None:
        raise ConfigError(f"config {config_id!r} is not in the fleet's matrix")
    keys = fleet_plan.host_run_keys(config, run_numbers, run_attempts, call_attempts)
    failed: list[str] = []
    with open_sweep(settings, request, url_explicit=ollama_url is not None, host_id=host_id,
                    shard_root=shared / "shards", lease=False) as ctx:
        plan = ctx.plan
        env = {**detect_environment(), "gpu_telemetry": ctx.telemetry_status,
               "cpu_pinning": getattr(ctx.client, "pinning", None)}
        writer.record_host(plan.warehouse_path, {
            "sweep_id": sweep_id, "host_id": host_id, "server_url": ctx.server.url,
            "server_version": ctx.server.version, "engine": ctx.server.kind,
            "environment_json": json.dumps(env, default=str), "seen_at": datetime.now(UTC)},
            **plan.shard_target)
        with subflows_without_heartbeat():
            for index, key in enumerate(keys):
                state = tr111_run(quote(ctx), quote(key), retries=quote(settings.retries),
                                  backoff_s=quote(settings.retry_backoff_s), return_state=True)
                wait_until_recorded(state.state_details.flow_run_id, task_count(plan.warmup))
                row = state.result()
                sweep.after_run(ctx, key, row, keys[index:], failed)
    return {"sweep_id": sweep_id, "config_id": config_id, "host": host_id, "failed": failed}


def _dispatch(job: fleet_plan.ConfigJob, parameters: dict, deployment: str, first_round: int):
    """The job's child flow run: the live one a previous coordinator started (same idempotency
    key), else a new one; rounds whose run already ended are skipped."""
    from prefect.deployments import run_deployment

    round_ = first_round
    while True:
        child = run_deployment(deployment, parameters=parameters, work_queue_name=job.queue,
                               idempotency_key=job.idempotency_key(round_), timeout=0,
                               tags=["tr111", fleet_plan.JOB_TAG, job.fleet_id])
        if child.state is None or not child.state.is_final():
            return child, round_
        round_ += 1  # that dispatch ended before (coordinator rerun): its rows are merged already


def _wait(children: dict, fleet_id: str, fleet, warehouse: Path, poll_s: float) -> dict:
    """Poll the children until all are final, merging shards as they arrive; job -> state."""
    from prefect.client.orchestration import get_client

    client = get_client(sync_client=True)
    states = {}
    while len(states) < len(children):
        for job, child in children.items():
            if job in states:
                continue
            state = client.read_flow_run(child.id).state
            if state is not None and state.is_final():
                states[job] = state
        coordinator.merge(warehouse, fleet_id, fleet, wait_s=0.5)
        if len(states) < len(children):
            time.sleep(poll_s)
    return states


@flow(name="tr111-fleet", persist_result=False)
def tr111_fleet(hosts: list[str], matrix: str = "quick", mode: str = "split",
                sweep_id: str | None = None, shared_dir: str | None = None,
                warehouse: str | None = None, out: str | None = None, model: str | None = None,
                runs: int | None = None, corpus: str | None = None, ollama_url: str | None = None,
                engine: str | None = None, report: bool = True, redispatch: int = 1,
                poll_s: float = 1.0, deployment: str = fleet_plan.HOST_FLOW_DEPLOYMENT) -> dict:
    """Dispatch one job per config (per host in replicate mode), wait, re-dispatch what a dead
    host left (split mode, ``redispatch`` times), then finish each sweep and render reports."""
    settings = Settings.build(warehouse_path=warehouse, out_dir=out, corpus_dir=corpus)
    request = sweep.prepare(settings, matrix, model=model, runs=runs, sweep_id=sweep_id)
    fleet_id = request.sweep_id
    from tr111.paths import sidecar_dir

    fleet = fleet_plan.FleetRequest.build(hosts=hosts, mode=mode,
                                    shared_dir=shared_dir or sidecar_dir(settings.warehouse_path) / "fleet")
    wh = settings.warehouse_path
    problems: dict[str, list[str]] = {}
    with SweepLease(wh, fleet_id) as lease:
        progress = coordinator.begin(wh, fleet_id, request, fleet)
        matrix_json = request.matrix.model_dump(mode="json")
        for dispatch_round in range(1, redispatch + 2):
            jobs = fleet_plan.jobs_for(fleet_id, request, fleet, progress)
            if not jobs:
                break
            children = {}
            for job in jobs:
                params = job.parameters(matrix=matrix_json, shared_dir=fleet.shared_dir, corpus=corpus,
                                        ollama_url=ollama_url, engine=engine)
                children[job], _ = _dispatch(job, params, deployment, dispatch_round)
            states = _wait(children, fleet_id, fleet, wh, poll_s)
            progress = coordinator.progress(wh, fleet_id, fleet)
            for job, state in states.items():
                if not state.is_completed():
                    problems.setdefault(job.sweep_id, []).append(
                        f"{job.name} ended {state.type.value.lower()} (round {dispatch_round})")
            if fleet.mode == "replicate":
                break  # a config belongs to its host: what it left is named, not moved
        statuses = coordinator.finish(wh, fleet_id, fleet, request, problems)
        lease.outcome = "completed" if all(s == "completed" for s in statuses.values()) else "completed_with_errors"
    result = {"fleet_id": fleet_id, "mode": fleet.mode, "sweeps": statuses, "warehouse": str(wh)}
    if report:
        from tr111.flows.report import tr111_report

        result["reports"] = {s: str(tr111_report(sweep=s, warehouse=str(wh), out=str(settings.out_dir),
                                                 publish=False).path) for s in statuses}
    return result
