"""The one object that owns a sweep's live resources, and closes them when the sweep ends.

A sweep holds an HTTP client for the timed calls, a control client for the small
endpoints (/api/version, /api/ps, /api/show), the GPU sampler and, with the embedded
engine, its process. They used to live in module-level caches; here a ``with
open_sweep(...)`` block owns them, tasks receive the context as an argument, and
nothing outlives the block.
"""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from tr111.ollama.client import OllamaClient
from tr111 import progress
from tr111.run.hostload import local_server_pid, server_on_host
from tr111.run.lease import SweepLease
from tr111.run.plan import SweepPlan, SweepRequest, restart_strategy_for
from tr111.run.server import ServerHandle, open_server
from tr111.run.worker import MeasurementWorker
from tr111.settings import Settings


class SweepContext:
    """Plan plus live resources. ``__slots__`` on purpose: Prefect records a subflow's
    parameters as JSON, and an object without ``__dict__`` is stored as a placeholder
    instead of being walked field by field (clients, threads, processes)."""

    __slots__ = ("plan", "server", "client", "control", "telemetry", "described", "lease",
                 "_ollama_pid")

    def __init__(self, plan: SweepPlan, server: ServerHandle, client: OllamaClient,
                 control: OllamaClient, telemetry, lease: SweepLease | None = None) -> None:
        self.plan = plan
        self.server = server
        self.client = client  # timed calls (a MeasurementWorker, or an in-process OllamaClient)
        self.control = control  # version, /api/ps, /api/show, restarts: connect timeout only
        self.telemetry = telemetry  # a GpuTelemetry (maybe disabled), or None when switched off
        self.described: set[str] = set()  # configs whose /api/show and /api/ps are recorded
        self.lease = lease  # this process's lease on the sweep id (tr111.run.lease)
        self._ollama_pid: int | None = None

    def server_pid(self) -> int | None:
        """The server process on this host, when tr111 can see it (the engine's changes on restart)."""
        engine = self.server.engine
        if engine is not None:
            return getattr(engine, "pid", None)
        if self._ollama_pid is None or not os.path.exists(f"/proc/{self._ollama_pid}"):
            self._ollama_pid = local_server_pid(self.server.url)  # a /proc scan: once, or after a restart
        return self._ollama_pid

    @property
    def server_on_host(self) -> bool:
        return self.server.engine is not None or server_on_host(self.server.url)

    @property
    def telemetry_status(self) -> str:
        tel = self.telemetry
        if tel is None:
            return "off: disabled in settings"
        return ("on: " + tel.info.name) if tel.enabled else ("off: " + str(tel.reason_disabled))


def _telemetry(enabled: bool):
    """One GPU sampler per sweep; off (all gpu_* NULL, one log line) without a driver."""
    if not enabled:
        return None
    from tr111.telemetry.sampler import GpuTelemetry

    return GpuTelemetry.open(0)


@contextmanager
def open_sweep(settings: Settings, request: SweepRequest, *, url_explicit: bool = False,
               host_id: str | None = None, shard_root: Path | None = None,
               lease: bool = True) -> Iterator[SweepContext]:
    """Lease the sweep id, pick (or start) the server, open the clients and the sampler;
    close all on exit. The lease comes first: a second process with the same id must
    refuse before it starts an engine or touches the server."""
    matrix = request.matrix
    with ExitStack() as stack:
        held = stack.enter_context(SweepLease(settings.warehouse_path, request.sweep_id)) if lease else None
        if held is not None and held.previous is not None:
            progress.emit("lease_taken_over", sweep_id=request.sweep_id,
                          previous=held.previous.describe())
        server = stack.enter_context(open_server(
            settings.engine, settings.ollama_url, matrix.model, url_explicit=url_explicit,
            threads=settings.engine_threads, connect_timeout_s=settings.connect_timeout_s))
        control = stack.enter_context(OllamaClient(server.url, connect_timeout_s=settings.connect_timeout_s))
        plan = SweepPlan(
            sweep_id=request.sweep_id, model=matrix.model, ollama_url=server.url,
            warehouse_path=settings.warehouse_path, templates_dir=settings.templates_dir,
            corpus_dir=settings.corpus_dir,
            restart_strategy=restart_strategy_for(settings.restart_strategy, server.kind),
            restart_policy=matrix.restart, restart_command=tuple(settings.restart_command),
            restart_timeout_s=settings.restart_timeout_s, connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s, call_timeout_s=settings.call_timeout_s,
            cache_bust=matrix.cache_bust, warmup=matrix.warmup, gpu_telemetry=settings.gpu_telemetry,
            quiet_host=settings.quiet_host or matrix.quiet_host,
            quiet_host_timeout_s=settings.quiet_host_timeout_s,
            warehouse_lock_wait_s=settings.warehouse_lock_wait_s,
            host_id=host_id or socket.gethostname(), shard_root=shard_root, merge=shard_root is None)
        timeouts = dict(connect_timeout_s=plan.connect_timeout_s, read_timeout_s=plan.read_timeout_s,
                        call_timeout_s=plan.call_timeout_s)
        if settings.measurement_worker:
            # pin_cpus: the worker on a core of its own, this process and its ephemeral Prefect
            # server on the others, put back when the block ends (tr111.run.worker)
            client = stack.enter_context(MeasurementWorker(server.url, settle_ms=settings.worker_settle_ms,
                                                           pin_cpus=settings.pin_cpus, **timeouts))
            client.start()  # now: its start-up is no part of the first run
        else:
            client = stack.enter_context(OllamaClient(server.url, **timeouts))
        telemetry = _telemetry(plan.gpu_telemetry)
        if telemetry is not None:
            stack.callback(telemetry.close)
        yield SweepContext(plan, server, client, control, telemetry, held)
