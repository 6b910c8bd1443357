"""What a fleet sweep dispatches, and to whom: one job per config (its runs in order on one host).

Two modes (issue 12):

* ``split``: one sweep; every config is a job on the shared ``split`` queue and the next free
  host pulls it, to cut wall time on identical hosts. Runs record the host they ran on.
* ``replicate``: every config on every host, to compare GPU types. Each host gets a sweep of its
  own (``<fleet id>-<host>``, all tagged with the fleet id), so per-sweep statistics, reports and
  the nightly regression check (each host against its own previous sweep) work unchanged.

A job carries the run numbers still to do and their next attempt numbers, computed by the
coordinator from the warehouse, so that a re-dispatch after a host died, or a rerun of the
coordinator, executes only unfinished runs. Its Prefect idempotency key is derived from the
fleet, the config, the host and a dispatch round: a rerun of the coordinator gets the very same
child flow run back (and adopts it while it is live) instead of starting a second one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tr111.errors import ConfigError
from tr111.matrix import Config, validate_id
from tr111.run.plan import CALL_STAGES, RunKey, SweepRequest

POOL = "tr111-fleet"
CONTROL_QUEUE = "control"  # the coordinator's own flow runs here: never on a host's queue
SPLIT_QUEUE = "split"
HOST_FLOW_DEPLOYMENT = "tr111-fleet-config/host"
JOB_TAG = "fleet-job"  # on every host job: the crash automation watches these, never the coordinator
Mode = Literal["split", "replicate"]


def host_queue(host: str) -> str:
    return f"host-{host}"


class FleetRequest(BaseModel):
    """User input for a fleet sweep (CLI flags or deployment parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[str]
    mode: Mode = "split"
    shared_dir: Path

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one host")
        for host in value:
            try:
                validate_id(host, "host id")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        if len(set(value)) != len(value):
            raise ValueError("a host is named twice")
        return value

    @classmethod
    def build(cls, **values) -> "FleetRequest":
        """From user input: a bad value is one ConfigError line (CLI exit 2)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "fleet"
            raise ConfigError(f"fleet {where}: {err.get('msg', 'invalid').removeprefix('Value error, ')}") from None


def sweep_ids(fleet_id: str, fleet: FleetRequest) -> dict[str | None, str]:
    """host -> the sweep it records into (split: one sweep for all, keyed None)."""
    if fleet.mode == "split":
        return {None: fleet_id}
    return {host: validate_id(f"{fleet_id}-{host}", "sweep id") for host in fleet.hosts}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a job is one dispatch
class ConfigJob:
    """One config's unfinished runs, for one host (replicate) or any free host (split)."""

    fleet_id: str
    sweep_id: str
    config_id: str
    host: str | None  # None: the split queue
    run_numbers: tuple[int, ...]
    run_attempts: dict[int, int] = field(default_factory=dict)  # run -> next run attempt
    call_attempts: dict[str, int] = field(default_factory=dict)  # "run:stage" -> next call attempt

    @property
    def queue(self) -> str:
        return host_queue(self.host) if self.host else SPLIT_QUEUE

    @property
    def name(self) -> str:
        return f"{self.config_id}@{self.host or 'split'}"

    def idempotency_key(self, dispatch_round: int) -> str:
        return f"tr111-fleet:{self.fleet_id}:{self.sweep_id}:{self.config_id}:{self.host or '*'}:{dispatch_round}"

    def parameters(self, *, matrix: dict, shared_dir: Path, corpus: str | None,
                   ollama_url: str | None, engine: str | None) -> dict:
        """The host flow's parameters: JSON only, nothing a host cannot rebuild by itself."""
        return {"sweep_id": self.sweep_id, "config_id": self.config_id,
                "run_numbers": list(self.run_numbers),
                "run_attempts": {str(k): v for k, v in self.run_attempts.items()},
                "call_attempts": dict(self.call_attempts), "matrix": matrix,
                "shared_dir": str(shared_dir), "corpus": corpus, "ollama_url": ollama_url,
                "engine": engine, "expected_host": self.host}


def jobs_for(fleet_id: str, request: SweepRequest, fleet: FleetRequest,
             progress: dict[str, tuple[set, dict, dict]]) -> list[ConfigJob]:
    """The jobs still to run. ``progress``: sweep id -> (done runs, call attempts, run attempts),
    as tr111.warehouse.reader reads them (finished_runs, attempt_counters)."""
    jobs = []
    for host, sweep_id in sweep_ids(fleet_id, fleet).items():
        done, call_attempts, run_attempts = progress.get(sweep_id, (set(), {}, {}))
        for config in request.configs:
            todo = tuple(r for r in range(1, request.matrix.runs + 1)
                         if (config.config_id, r) not in done)
            if not todo:
                continue
            jobs.append(ConfigJob(
                fleet_id=fleet_id, sweep_id=sweep_id, config_id=config.config_id, host=host,
                run_numbers=todo,
                run_attempts={r: run_attempts.get((config.config_id, r), 0) + 1 for r in todo},
                call_attempts={f"{r}:{s}": call_attempts.get((config.config_id, r, s), 0) + 1
                               for r in todo for s in CALL_STAGES}))
    return jobs


def host_run_keys(config: Config, run_numbers: list[int], run_attempts: dict[str, int],
                  call_attempts: dict[str, int]) -> list[RunKey]:
    """On the host: the job's runs in order; the first follows another config (a restart,
    or a cold first call), the rest follow their own config."""
    return [RunKey(config=config, run_number=r, run_attempt=int(run_attempts.get(str(r), 1)),
                   first_call_attempts={s: int(call_attempts.get(f"{r}:{s}", 1)) for s in CALL_STAGES},
                   follows_other_config=i == 0)
            for i, r in enumerate(run_numbers)]
