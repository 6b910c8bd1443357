"""The stages of one run, as plain functions: Prefect tasks wrap these 1:1.

Stage timings are taken inside these functions with perf_counter_ns, so the
orchestrator's own cost stays visible as ``total_ms - sum(stages)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tr111.errors import Tr111Error
from tr111.matrix import Config
from tr111.metrics import CallResult
from tr111.ollama_client import OllamaClient
from tr111.prompts import analysis_prompt, report_prompt, run_nonce
from tr111.restart import RestartOutcome, restart_server

NS_PER_MS = 1_000_000
STAGES = ("analysis", "report")
COLD_LOAD_MS = 50.0  # a load_duration above this means the call paid a model load


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


@dataclass(frozen=True)
class RunKey:
    config: Config
    run_number: int
    run_attempt: int
    first_call_attempts: dict = field(default_factory=dict)  # stage -> first attempt number

    @property
    def name(self) -> str:
        return f"{self.config.config_id}-run{self.run_number}"


_CLIENTS: dict[tuple, OllamaClient] = {}


def client_for(plan: SweepPlan) -> OllamaClient:
    """One pooled client per server and timeouts: connection reuse keeps overhead flat."""
    key = (plan.ollama_url, plan.connect_timeout_s, plan.read_timeout_s, plan.call_timeout_s)
    if key not in _CLIENTS:
        _CLIENTS[key] = OllamaClient(plan.ollama_url, connect_timeout_s=plan.connect_timeout_s,
                                     read_timeout_s=plan.read_timeout_s,
                                     call_timeout_s=plan.call_timeout_s)
    return _CLIENTS[key]


def should_restart(plan: SweepPlan, run_number: int) -> bool:
    if plan.restart_policy == "never":
        return False
    return plan.restart_policy == "per_run" or run_number == 1


def restart_stage(plan: SweepPlan, key: RunKey) -> RestartOutcome:
    strategy = plan.restart_strategy if should_restart(plan, key.run_number) else "none"
    return restart_server(strategy, client_for(plan), plan.model,
                          command=plan.restart_command, timeout_s=plan.restart_timeout_s)


def build_prompt(plan: SweepPlan, key: RunKey, stage: str, source_text: str) -> str:
    nonce = run_nonce(plan.sweep_id, key.config.config_id, key.run_number) if plan.cache_bust else None
    if stage == "report":
        return report_prompt(plan.templates_dir, source_text, nonce)
    return analysis_prompt(plan.templates_dir, source_text, nonce)


def call_stage(plan: SweepPlan, key: RunKey, stage: str, prompt: str, attempt: int,
               record_failure) -> CallResult:
    """One attempt of a streaming call; a failed attempt is handed to ``record_failure``."""
    client = client_for(plan)
    try:
        return client.generate(plan.model, prompt, key.config.options or None)
    except Tr111Error as exc:
        partial = exc.partial if isinstance(exc.partial, CallResult) else CallResult(
            model=plan.model, prompt=prompt, options=dict(key.config.options),
            started_at=datetime.now(UTC), status="error", error=f"{type(exc).__name__}: {exc}")
        record_failure(call_row(plan, key, stage, attempt, partial, first_after_restart=False))
        raise


def classify_cold(call: CallResult, first_after_restart: bool) -> tuple[bool, str]:
    """Cold when the call paid a model load: right after a restart, or a large load_duration."""
    load = call.server.load_duration_ms
    if first_after_restart:
        return True, "first call after restart"
    if load > COLD_LOAD_MS:
        return True, f"load_duration {load:.1f} ms > {COLD_LOAD_MS:g} ms"
    return False, f"warm: load_duration {load:.1f} ms"


def call_row(plan: SweepPlan, key: RunKey, stage: str, attempt: int, call: CallResult, *,
             first_after_restart: bool) -> dict:
    from warehouse.writer import to_json

    row = call.as_row()
    options = row.pop("options")
    cold, reason = classify_cold(call, first_after_restart) if call.status == "ok" else (None, None)
    return {
        **row, "sweep_id": plan.sweep_id, "config_id": key.config.config_id,
        "run_number": key.run_number, "stage": stage, "attempt": attempt,
        "run_attempt": key.run_attempt, "options_json": to_json(options),
        "is_cold": cold, "cold_reason": reason,
    }


def run_row(plan: SweepPlan, key: RunKey, *, status: str, started_at: datetime,
            restart: RestartOutcome | None, ingest_ms: float | None, calls: dict[str, CallResult],
            total_ms: float, fingerprint: str | None, error: str | None = None,
            cold: bool | None = None) -> dict:
    return {
        "sweep_id": plan.sweep_id, "config_id": key.config.config_id,
        "run_number": key.run_number, "status": status, "cold": cold,
        "restart_ms": restart.duration_ms if restart else None, "ingest_ms": ingest_ms,
        "analysis_ms": _wall(calls.get("analysis")), "report_ms": _wall(calls.get("report")),
        "total_ms": total_ms, "started_at": started_at, "finished_at": datetime.now(UTC),
        "run_attempt": key.run_attempt,
        "restart_strategy": restart.strategy if restart else None, "error": error,
        "corpus_fingerprint": fingerprint,
    }


def _wall(call: CallResult | None) -> float | None:
    return call.wall_ms if call is not None else None


def elapsed_ms(t0_ns: int) -> float:
    return (time.perf_counter_ns() - t0_ns) / NS_PER_MS
