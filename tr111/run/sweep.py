"""The sweep's bookkeeping around its runs: start (or resume), after each run, finish.

The Prefect flow ``tr111-sweep`` only composes these with the run subflows; every
decision (what is left to run, when to describe a config, when the server is gone
for good, the final status) is made here, without Prefect.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tr111 import __version__, progress
from tr111.errors import (ConfigError, ServerUnavailableError, StorageError, SweepIncompleteError,
                          Tr111Error, WarehouseLockedError)
from tr111.ingest.corpus import check_corpus
from tr111.matrix import load_matrix
from tr111.run import hostload, lease, plan as planning
from tr111.run.interrupts import raise_if_interrupted
from tr111.run.context import SweepContext
from tr111.run.environment import detect_environment
from tr111.run.plan import RunKey, SweepRequest
from tr111.run.restart import wait_until
from tr111.settings import Settings
from tr111.run.stages import tell_lock
from tr111.paths import sidecar_dir
from tr111.warehouse import connect, shards, writer
from tr111.warehouse.connection import storage_error
from tr111.warehouse.reader import (attempt_counters, finished_runs, recorded_experiment,
                                    recorded_order_seed)

INTERRUPT_WAIT_S = 2.0  # marking a sweep interrupted must fit the 5 s a signal allows


@dataclass(frozen=True)
class SweepStart:
    """What is left to do when a sweep starts: the runs to execute and how many are done."""

    todo: list[RunKey]
    done: int
    total: int


def prepare(settings: Settings, matrix: str, *, model: str | None, runs: int | None,
            sweep_id: str | None) -> SweepRequest:
    """Validate everything a user typed before any server is touched or a row is written."""
    request = planning.request_for(load_matrix(matrix, model=model, runs=runs), sweep_id)
    check_corpus(settings.corpus_dir)  # an empty corpus fails before any row or restart
    check_output_paths(settings, report=True)
    if sweep_id:
        check_same_experiment(settings.warehouse_path, request)
    return request


MIN_FREE_BYTES = 16 * 2**20


def check_output_paths(settings: Settings, *, report: bool) -> None:
    """Every folder the sweep will write (warehouse, its shards and leases, the report) must
    take a file now, and an existing warehouse must open: a read-only --out or a corrupt
    warehouse is one line before the first call, not a traceback after the last."""
    folders = [settings.warehouse_path.parent, sidecar_dir(settings.warehouse_path)]
    if report:
        folders.append(settings.out_dir)
    for folder in folders:
        _check_writable(Path(folder))
    if settings.warehouse_path.exists():
        try:
            with connect(settings.warehouse_path, timeout_s=2.0):
                pass
        except WarehouseLockedError:
            pass  # someone reads it now: the sweep waits for it (and names it) when it writes


def _check_writable(folder: Path) -> None:
    """A probe file in ``folder`` or, when it does not exist yet, in its nearest existing
    parent (nothing is created for a sweep that is refused)."""
    target = folder
    while not target.exists() and target.parent != target:
        target = target.parent
    probe = target / f".tr111-write-check-{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
        free = shutil.disk_usage(target).free
    except OSError as exc:  # named by the folder, not by the probe file
        named = OSError(exc.errno, exc.strerror, str(folder))
        raise (storage_error(named, folder) or StorageError(f"cannot write to {folder}: {exc}")) from None
    if free < MIN_FREE_BYTES:
        raise StorageError(f"disk full: {folder} has {free / 2**20:.1f} MiB free"
                           f" (a sweep needs at least {MIN_FREE_BYTES // 2**20} MiB)")


def check_same_experiment(warehouse_path, request: SweepRequest) -> None:
    """A resume (a --sweep-id the warehouse holds) must ask for the experiment it started:
    same model, grid, options, runs, baseline, restart policy, cache_bust and warmup."""
    if not warehouse_path.exists():
        return
    with connect(warehouse_path) as con:
        recorded = recorded_experiment(con, request.sweep_id)
    if recorded is not None:
        refusal = planning.resume_refusal(request.sweep_id, recorded, request.matrix)
        if refusal:
            raise ConfigError(refusal)


def begin(ctx: SweepContext, request: SweepRequest) -> SweepStart:
    """Record the sweep and its configs (refreshed on resume); the runs not yet done."""
    plan, server = ctx.plan, ctx.server
    timeouts = ctx.client.timeouts
    progress.emit("server", url=server.url, kind=server.kind, version=server.version,
                  model_file=server.model_file, timeouts=timeouts)
    show = ctx.control.show(plan.model)  # unknown model: terminal, before any row
    env = detect_environment()
    env["gpu_telemetry"] = ctx.telemetry_status
    env["cpu_pinning"] = getattr(ctx.client, "pinning", None) or "off: no measurement worker"
    progress.emit("telemetry", status=env["gpu_telemetry"])
    wait_s = plan.warehouse_lock_wait_s
    # Runs an earlier process finished but could not merge (a lock, a kill) count as done.
    merged = shards.merge_pending(plan.warehouse_path, plan.sweep_id, timeout_s=wait_s, on_lock=tell_lock)
    if merged.pending:
        raise WarehouseLockedError(f"warehouse {plan.warehouse_path} stayed locked by {merged.holder}"
                                   f" for {wait_s:g} s (TR111_WAREHOUSE_LOCK_WAIT_S)", holder=merged.holder)
    with connect(plan.warehouse_path, timeout_s=wait_s, on_lock=tell_lock) as con:
        done = finished_runs(con, plan.sweep_id)
        call_attempts, run_attempts = attempt_counters(con, plan.sweep_id)
        seed = recorded_order_seed(con, plan.sweep_id)  # a resume keeps the order it had
    lease.reconcile(plan.warehouse_path, skip=plan.sweep_id, timeout_s=wait_s)
    if seed is None:
        seed = request.matrix.seed if request.matrix.seed is not None else planning.draw_seed()
    todo = planning.run_keys(request, done, call_attempts, run_attempts, seed)
    writer.start_sweep(plan.warehouse_path, planning.sweep_row(
        plan, request.matrix, server_version=server.version, engine=server.kind,
        engine_model_file=server.model_file, environment=env, show=show, version=__version__,
        order_seed=seed, restarts=planning.restarts_planned(plan, todo)),
        [planning.config_row(plan.sweep_id, c, i) for i, c in enumerate(request.configs)],
        timeout_s=wait_s, on_lock=tell_lock)
    total = len(request.configs) * request.matrix.runs
    progress.emit("start", sweep_id=plan.sweep_id, total=total, done=len(done), todo=len(todo))
    return SweepStart(todo, len(done), total)


def before_run(ctx: SweepContext, key: RunKey) -> None:
    """A signal that arrived during the last run ends the sweep here, even if Prefect swallowed
    its exception (tr111.run.interrupts); with --quiet-host, wait (bounded) until other
    processes leave the CPUs alone."""
    raise_if_interrupted()
    if not ctx.plan.quiet_host:
        return
    quiet, waited = hostload.wait_for_quiet(ctx.server_pid(), ctx.plan.quiet_host_timeout_s)
    progress.emit("quiet_host", name=key.name, quiet=quiet, waited_s=waited)


def after_run(ctx: SweepContext, key: RunKey, row: dict, remaining: list[RunKey],
              failed: list[str]) -> None:
    """A failed run is named (and ends the sweep if the server is gone for good); the
    first ok run of a config records what the server says about the loaded model."""
    if row["status"] != "ok":
        failed.append(key.name)
        stop_if_server_gone(ctx, remaining)
    elif key.config.config_id not in ctx.described:
        describe(ctx, key.config.config_id)
    progress.emit("run", name=key.name, status=row["status"], total_ms=row["total_ms"])


def describe(ctx: SweepContext, config_id: str) -> None:
    """/api/show and /api/ps right after a run: the context length actually in effect."""
    try:
        ps = ctx.control.loaded(ctx.plan.model)
        show = ctx.control.show(ctx.plan.model)
    except Tr111Error:
        return
    writer.update_config_server_info(ctx.plan.warehouse_path, ctx.plan.sweep_id, config_id,
                                     show=planning.show_digest(show), ps=ps, on_lock=tell_lock,
                                     **ctx.plan.shard_target)
    ctx.described.add(config_id)


def stop_if_server_gone(ctx: SweepContext, remaining: list[RunKey]) -> None:
    """Wait (restart timeout) for the server; if it never answers, name what is unfinished."""
    plan = ctx.plan
    try:
        wait_until(lambda: bool(ctx.control.version()), plan.restart_timeout_s, "server gone")
    except ServerUnavailableError:
        names = [k.name for k in remaining]
        raise SweepIncompleteError(
            f"server at {plan.ollama_url} did not come back within {plan.restart_timeout_s:g} s;"
            f" unfinished runs ({len(names)}): {', '.join(names) or 'none'}") from None


def finish(ctx: SweepContext, status: str, note: str | None = None) -> None:
    """Merge what a lock left pending (waiting up to TR111_WAREHOUSE_LOCK_WAIT_S, naming the
    holder), then record the final status. Shards a lock still holds stay safe on disk."""
    plan = ctx.plan
    wait_s = plan.warehouse_lock_wait_s
    outcome = shards.merge_pending(plan.warehouse_path, plan.sweep_id, timeout_s=wait_s, on_lock=tell_lock)
    if outcome.pending:
        raise WarehouseLockedError(
            f"{outcome.pending} finished measurement shard(s) kept in"
            f" {shards.shards_dir(plan.warehouse_path, plan.sweep_id)}: warehouse {plan.warehouse_path}"
            f" stayed locked by {outcome.holder} for {wait_s:g} s; rerun with --sweep-id"
            f" {plan.sweep_id} to merge them", holder=outcome.holder)
    writer.finish_sweep(plan.warehouse_path, plan.sweep_id, status, note, timeout_s=wait_s,
                        on_lock=tell_lock)
    if ctx.lease is not None:
        ctx.lease.outcome = status


def interrupted(ctx: SweepContext, signal_name: str) -> str:
    """A signal ended the sweep: mark it (best effort, bounded) and say how to resume."""
    plan = ctx.plan
    hint = f"rerun with --sweep-id {plan.sweep_id} to resume"
    if ctx.lease is not None:
        ctx.lease.outcome = "interrupted"
    try:
        shards.merge_pending(plan.warehouse_path, plan.sweep_id, timeout_s=INTERRUPT_WAIT_S)
        writer.finish_sweep(plan.warehouse_path, plan.sweep_id, "interrupted",
                            f"interrupted by {signal_name}; {hint}", timeout_s=INTERRUPT_WAIT_S)
    except (WarehouseLockedError, StorageError, ConfigError):
        pass  # the lease, free from now on, makes the sweep read as interrupted anyway
    return hint
