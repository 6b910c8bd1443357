"""What a sweep will do, decided before its first call: the plan, the runs left, the rows.

Pure functions over the matrix, the settings and what the warehouse already holds,
so resume bookkeeping and row shapes are unit-tested without Prefect or a server.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tr111.matrix import Config, SweepMatrix, expand, validate_id

STAGES = ("analysis", "report")
CALL_STAGES = ("warmup", *STAGES)


@dataclass(frozen=True)
class SweepPlan:
    """Everything the tasks of a sweep share; immutable and cheap to pass around."""

    sweep_id: str
    model: str
    ollama_url: str
    warehouse_path: Path
    templates_dir: Path
    corpus_dir: Path
    restart_strategy: str
    restart_policy: str  # per_config | per_run | never
    restart_command: tuple[str, ...] = ()
    restart_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    call_timeout_s: float = 900.0
    cache_bust: bool = True
    warmup: bool = False
    gpu_telemetry: bool = True


@dataclass(frozen=True)
class RunKey:
    """One run to execute: which config, which replicate, which attempt numbers come next."""

    config: Config
    run_number: int
    run_attempt: int
    first_call_attempts: dict = field(default_factory=dict)  # stage -> first attempt number

    @property
    def name(self) -> str:
        return f"{self.config.config_id}-run{self.run_number}"


@dataclass(frozen=True)
class SweepRequest:
    """A validated request: the matrix, its configs and the sweep id (new or resumed)."""

    matrix: SweepMatrix
    configs: list[Config]
    sweep_id: str


def new_sweep_id() -> str:
    return datetime.now(UTC).strftime("sweep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def request_for(matrix: SweepMatrix, sweep_id: str | None) -> SweepRequest:
    """Expand the matrix and check every id that will become part of a path."""
    configs = expand(matrix)
    for config in configs:
        validate_id(config.config_id, "config id")
    return SweepRequest(matrix, configs, validate_id(sweep_id or new_sweep_id(), "sweep id"))


def restart_strategy_for(chosen: str | None, server_kind: str) -> str:
    """The settings' strategy, else the server's natural one (a real restart for the engine)."""
    return chosen or ("embedded" if server_kind == "embedded" else "unload")


def should_restart(plan: SweepPlan, run_number: int) -> bool:
    if plan.restart_policy == "never":
        return False
    return plan.restart_policy == "per_run" or run_number == 1


def run_keys(request: SweepRequest, done: set[tuple[str, int]], call_attempts: dict,
             run_attempts: dict) -> list[RunKey]:
    """The runs still to execute, in matrix order, with their next attempt numbers.

    ``done``: (config, run) already recorded ok; ``call_attempts``: highest attempt per
    (config, run, stage); ``run_attempts``: highest run attempt per (config, run).
    """
    keys = []
    for config in request.configs:
        for run_number in range(1, request.matrix.runs + 1):
            if (config.config_id, run_number) in done:
                continue
            keys.append(RunKey(
                config=config, run_number=run_number,
                run_attempt=run_attempts.get((config.config_id, run_number), 0) + 1,
                first_call_attempts={s: call_attempts.get((config.config_id, run_number, s), 0) + 1
                                     for s in CALL_STAGES}))
    return keys


def config_row(sweep_id: str, config: Config, position: int) -> dict:
    def num(name, cast):
        value = config.options.get(name)
        return cast(value) if value is not None else None

    return {"sweep_id": sweep_id, "config_id": config.config_id,
            "num_gpu": num("num_gpu", int), "num_ctx": num("num_ctx", int),
            "temperature": num("temperature", float),
            "options_json": json.dumps(config.options, sort_keys=True),
            "is_baseline": config.is_baseline, "position": position}


def show_digest(show: dict) -> dict:
    """The parts of /api/show worth keeping (the full modelfile/template can be large)."""
    return {k: show.get(k) for k in ("details", "model_info", "modified_at", "capabilities")
            if k in show}


def sweep_row(plan: SweepPlan, matrix: SweepMatrix, *, server_version: str, engine: str,
              engine_model_file: str | None, environment: dict, show: dict, version: str) -> dict:
    """The ``sweeps`` row written when a sweep starts (and refreshed on resume)."""
    return {
        "sweep_id": plan.sweep_id, "started_at": datetime.now(UTC), "status": "running",
        "model": plan.model, "ollama_url": plan.ollama_url, "server_version": server_version,
        "matrix_json": matrix.to_json(), "host": environment["host"], "engine": engine,
        "engine_model_file": engine_model_file, "tr111_version": version,
        "environment_json": json.dumps({**environment, "show": show_digest(show)}, default=str),
        "cache_bust": plan.cache_bust, "warmup": plan.warmup, "corpus_dir": str(plan.corpus_dir),
    }


def final_status(failed: list[str]) -> tuple[str, str | None]:
    """``completed`` or ``completed_with_errors`` with the failed runs named."""
    if not failed:
        return "completed", None
    return "completed_with_errors", "failed runs: " + ", ".join(failed)
