"""What a sweep will do, decided before its first call: the plan, the runs left, the rows.

Pure functions over the matrix, the settings and what the warehouse already holds,
so resume bookkeeping and row shapes are unit-tested without Prefect or a server.
"""

from __future__ import annotations

import json
import os
import random
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
    quiet_host: bool = False  # wait for other processes to leave the CPUs before each run
    quiet_host_timeout_s: float = 120.0
    warehouse_lock_wait_s: float = 600.0  # the sweep's last merge waits this long for a lock
    host_id: str | None = None  # recorded on every run and call (a fleet host's HOST_ID)
    shard_root: Path | None = None  # None: beside the warehouse; a fleet host: the shared folder
    merge: bool = True  # False on a fleet host: the coordinator alone merges into the warehouse

    @property
    def shard_target(self) -> dict:
        """Where this plan's shards go, as keyword arguments of the warehouse writer."""
        return {"root": self.shard_root, "merge": self.merge}


@dataclass(frozen=True)
class RunKey:
    """One run to execute: which config, which replicate, which attempt numbers come next."""

    config: Config
    run_number: int
    run_attempt: int
    first_call_attempts: dict = field(default_factory=dict)  # stage -> first attempt number
    # Does another config (or nothing, in this process) run just before? Then the server must
    # reload the runner: a per_config restart happens, or the first call is cold by position.
    follows_other_config: bool = True

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


def should_restart(plan: SweepPlan, key: RunKey) -> bool:
    """per_config: whenever the config changes (every run when replicates are interleaved)."""
    if plan.restart_policy == "never":
        return False
    return plan.restart_policy == "per_run" or key.follows_other_config


def draw_seed() -> int:
    return secrets.randbelow(2**32)


def execution_order(request: SweepRequest, seed: int | None) -> list[tuple[Config, int]]:
    """(config, run number) in the order they run.

    ``order: grid`` keeps the matrix order; ``shuffled`` permutes the configs with ``seed`` (a
    new permutation for every replicate round when interleaved). ``interleave``: run 1 of
    every config, then run 2, ...; otherwise a config's runs follow each other.
    """
    matrix = request.matrix
    rng = random.Random(seed)

    def arranged() -> list[Config]:
        configs = list(request.configs)
        if matrix.order == "shuffled":
            rng.shuffle(configs)
        return configs

    runs = range(1, matrix.runs + 1)
    if not matrix.interleave:
        return [(c, r) for c in arranged() for r in runs]
    order: list[tuple[Config, int]] = []
    for r in runs:
        configs = arranged()
        if order and len(configs) > 1 and configs[0] is order[-1][0]:
            configs[0], configs[1] = configs[1], configs[0]  # never the same config twice in a row
        order += [(c, r) for c in configs]
    return order


def run_keys(request: SweepRequest, done: set[tuple[str, int]], call_attempts: dict,
             run_attempts: dict, seed: int | None = None) -> list[RunKey]:
    """The runs still to execute, in execution order, with their next attempt numbers.

    ``done``: (config, run) already recorded ok; ``call_attempts``: highest attempt per
    (config, run, stage); ``run_attempts``: highest run attempt per (config, run).
    """
    keys: list[RunKey] = []
    for config, run_number in execution_order(request, seed):
        if (config.config_id, run_number) in done:
            continue
        previous = keys[-1].config.config_id if keys else None
        keys.append(RunKey(
            config=config, run_number=run_number,
            run_attempt=run_attempts.get((config.config_id, run_number), 0) + 1,
            first_call_attempts={s: call_attempts.get((config.config_id, run_number, s), 0) + 1
                                 for s in CALL_STAGES},
            # the first run of this process: a resume of run 2.. keeps the loaded model as before
            follows_other_config=(previous != config.config_id) if keys else run_number == 1))
    return keys


def restarts_planned(plan: SweepPlan, keys: list[RunKey]) -> int:
    """How many restarts the order costs (interleaving turns per_config into one per run)."""
    return sum(1 for key in keys if should_restart(plan, key))


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


def run_order(matrix: SweepMatrix) -> str:
    """How runs were ordered, in words for the sweep row and the report."""
    return f"{matrix.order}, {'interleaved replicates' if matrix.interleave else 'runs of a config together'}"


def sweep_row(plan: SweepPlan, matrix: SweepMatrix, *, server_version: str, engine: str,
              engine_model_file: str | None, environment: dict, show: dict, version: str,
              order_seed: int | None = None, restarts: int | None = None) -> dict:
    """The ``sweeps`` row written when a sweep starts (and refreshed on resume)."""
    return {
        "run_order": run_order(matrix), "order_seed": order_seed, "restarts_planned": restarts,
        "sweep_id": plan.sweep_id, "started_at": datetime.now(UTC), "status": "running",
        "model": plan.model, "ollama_url": plan.ollama_url, "server_version": server_version,
        "matrix_json": matrix.to_json(), "host": environment["host"], "engine": engine,
        "engine_model_file": engine_model_file, "tr111_version": version,
        "environment_json": json.dumps({**environment, "show": show_digest(show)}, default=str),
        "cache_bust": plan.cache_bust, "warmup": plan.warmup, "corpus_dir": str(plan.corpus_dir),
        "owner_host": environment["host"], "owner_pid": os.getpid(),
    }


# What defines the experiment a sweep id names: a resume must ask for the same. The run-order
# keys (order, seed, interleave, quiet_host) may change on resume; they do not change what is
# measured, only when.
EXPERIMENT_KEYS = ("model", "runs", "baseline", "grid", "options", "restart", "cache_bust", "warmup")


def experiment_fingerprint(matrix: SweepMatrix | dict) -> dict:
    """The experiment-defining keys of a matrix (or of a recorded ``matrix_json``, with keys
    an older tr111 did not record filled with their defaults); grid values as a set."""
    data = matrix.model_dump(mode="json") if isinstance(matrix, SweepMatrix) else dict(matrix)
    fingerprint = {}
    for key in EXPERIMENT_KEYS:
        if key in data:
            value = data[key]
        else:
            value = SweepMatrix.model_fields[key].get_default(call_default_factory=True)
        if key == "grid" and isinstance(value, dict):
            value = {name: sorted(values, key=_grid_order) if isinstance(values, list) else values
                     for name, values in value.items()}
        fingerprint[key] = value
    return fingerprint


def experiment_changes(recorded: dict, matrix: SweepMatrix) -> list[str]:
    """What a resume changes against the recorded matrix, one phrase per key (empty: same)."""
    def show(value) -> str:
        return "(unset)" if value is _UNSET else json.dumps(value, sort_keys=True)

    before, after = experiment_fingerprint(recorded), experiment_fingerprint(matrix)
    changes: list[str] = []
    for key in EXPERIMENT_KEYS:
        old, new = before[key], after[key]
        if old == new:
            continue
        if key in ("grid", "options") and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new), key=str):
                o, n = old.get(name, _UNSET), new.get(name, _UNSET)
                if o != n:
                    changes.append(f"{key}.{name} {show(o)} -> {show(n)}")
        else:
            changes.append(f"{key} {show(old)} -> {show(new)}")
    return changes


_UNSET = object()


def _grid_order(value) -> tuple:
    """Numbers by value, then strings: grid values compared as a set, shown in a stable order."""
    return (isinstance(value, str), 0 if isinstance(value, str) else value, repr(value))


def resume_refusal(sweep_id: str, recorded: dict, matrix: SweepMatrix) -> str | None:
    """The one-line reason a resume is refused, or None when it asks for the same experiment."""
    changes = experiment_changes(recorded, matrix)
    if not changes:
        return None
    advice = "(rerun with the same matrix and model, or a new --sweep-id)"
    old_model, new_model = experiment_fingerprint(recorded)["model"], matrix.model
    if len(changes) == 1 and old_model != new_model:
        return (f"sweep {sweep_id} was started with model {_one_line(old_model)}; this resume asks"
                f" for {_one_line(new_model)} {advice}")
    return (f"sweep {sweep_id} was started with another experiment; this resume changes "
            f"{_one_line('; '.join(changes))} {advice}")


def _one_line(value) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 300 else text[:297] + "..."


def final_status(failed: list[str]) -> tuple[str, str | None]:
    """``completed`` or ``completed_with_errors`` with the failed runs named."""
    if not failed:
        return "completed", None
    return "completed_with_errors", "failed runs: " + ", ".join(failed)
