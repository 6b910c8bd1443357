"""The coordinator's bookkeeping for a fleet sweep, without Prefect: sweep rows, progress read
back from the warehouse, merging the hosts' shards, final statuses.

The coordinator is the only writer of the warehouse. Hosts write shards into the fleet's
shared folder (``<shared>/shards/<sweep>/``); every merge here is idempotent (tr111.warehouse.
shards), so merging while hosts still write, after a host died, or again after a coordinator
restart adds each row once.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from tr111 import __version__
from tr111.fleet.plan import FleetRequest, sweep_ids
from tr111.run import plan as planning
from tr111.run.plan import SweepRequest
from tr111.warehouse import connect, shards, writer
from tr111.warehouse.reader import attempt_counters, finished_runs

MERGE_WAIT_S = 2.0


def shard_root(fleet: FleetRequest) -> Path:
    return Path(fleet.shared_dir) / "shards"


def begin(warehouse: Path, fleet_id: str, request: SweepRequest, fleet: FleetRequest) -> dict:
    """Record the fleet's sweeps (refreshed on a rerun) and return what is already done."""
    merge(warehouse, fleet_id, fleet)  # rows a host left before a coordinator restart
    matrix = request.matrix
    configs = request.configs
    for host, sweep_id in sweep_ids(fleet_id, fleet).items():
        row = {"sweep_id": sweep_id, "started_at": datetime.now(UTC), "status": "running",
               "model": matrix.model, "matrix_json": matrix.to_json(),
               "host": host or "fleet: " + ", ".join(fleet.hosts), "engine": "fleet",
               "tr111_version": __version__, "environment_json": json.dumps({"fleet_hosts": fleet.hosts}),
               "cache_bust": matrix.cache_bust, "warmup": matrix.warmup,
               "run_order": "per host: each config's runs in order, configs as hosts pull them"
                            if host is None else "per config, in matrix order, on one host",
               "owner_host": socket.gethostname(), "owner_pid": os.getpid(),
               "fleet_id": fleet_id, "fleet_mode": fleet.mode}
        writer.start_sweep(warehouse, row, [planning.config_row(sweep_id, c, i) for i, c in enumerate(configs)])
    return progress(warehouse, fleet_id, fleet)


def progress(warehouse: Path, fleet_id: str, fleet: FleetRequest) -> dict[str, tuple[set, dict, dict]]:
    """sweep id -> (finished runs, call attempts, run attempts)."""
    found = {}
    with connect(warehouse) as con:
        for sweep_id in sweep_ids(fleet_id, fleet).values():
            found[sweep_id] = (finished_runs(con, sweep_id), *attempt_counters(con, sweep_id))
    return found


def merge(warehouse: Path, fleet_id: str, fleet: FleetRequest, *, wait_s: float = MERGE_WAIT_S) -> int:
    """Merge every shard the hosts wrote so far; returns how many are still pending (a lock)."""
    pending = 0
    for sweep_id in sweep_ids(fleet_id, fleet).values():
        outcome = shards.merge_pending(warehouse, sweep_id, timeout_s=wait_s, root=shard_root(fleet))
        pending += outcome.pending
    return pending


def finish(warehouse: Path, fleet_id: str, fleet: FleetRequest, request: SweepRequest,
           problems: dict[str, list[str]], *, wait_s: float = 600.0) -> dict[str, str]:
    """Final status per sweep, from the rows (not from the child runs' states): completed when
    every planned run is ok, else completed_with_errors naming the unfinished runs."""
    if merge(warehouse, fleet_id, fleet, wait_s=wait_s):
        from tr111.errors import WarehouseLockedError

        raise WarehouseLockedError(f"shards of fleet {fleet_id} are still pending in"
                                   f" {shard_root(fleet)}: the warehouse stayed locked")
    done = progress(warehouse, fleet_id, fleet)
    statuses = {}
    for host, sweep_id in sweep_ids(fleet_id, fleet).items():
        missing = [f"{c.config_id}-run{r}" for c in request.configs
                   for r in range(1, request.matrix.runs + 1) if (c.config_id, r) not in done[sweep_id][0]]
        notes = problems.get(sweep_id, [])
        status, note = planning.final_status(missing)
        if notes:
            note = "; ".join([*([note] if note else []), *notes])
        writer.adopt_host_environment(warehouse, sweep_id)
        writer.finish_sweep(warehouse, sweep_id, status, note)
        statuses[sweep_id] = status
    return statuses
