"""The stages of one run, as plain functions: Prefect tasks wrap these 1:1.

Stage timings are taken inside these functions with perf_counter_ns, so the
orchestrator's own cost stays visible as ``total_ms - sum(stages)``. The live
resources (clients, sampler, engine) come from the sweep's SweepContext.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tr111.errors import Tr111Error
from tr111.ollama.client import OllamaClient
from tr111.ollama.metrics import NS_PER_MS, CallResult
from tr111.run import hostload
from tr111.run.coldwarm import CallTiming, classify_cold
from tr111.run.context import SweepContext
from tr111.run.plan import STAGES, RunKey, SweepPlan, should_restart
from tr111.run.prompts import analysis_prompt, report_prompt, run_nonce
from tr111.run.restart import RestartOutcome, restart_server
from tr111 import progress
from tr111.warehouse import writer
from tr111.warehouse.shards import MergeOutcome
from tr111.warehouse.writer import to_json

__all__ = ["STAGES", "WARMUP_PROMPT", "restart_stage", "build_prompt", "call_stage", "finish_run",
           "truncation", "classify_run_calls", "elapsed_ms", "record_stage", "record_attempt"]

WARMUP_PROMPT = "Warm-up request: reply with one word."
CHARS_PER_TOKEN = 4.0  # rough English estimate, used only to spot silent truncation


def restart_stage(ctx: SweepContext, key: RunKey) -> RestartOutcome:
    plan = ctx.plan
    strategy = plan.restart_strategy if should_restart(plan, key) else "none"
    return restart_server(strategy, ctx.control, plan.model, engine=ctx.server.engine,
                          command=plan.restart_command, timeout_s=plan.restart_timeout_s)


def build_prompt(plan: SweepPlan, key: RunKey, stage: str, source_text: str) -> str:
    if stage == "warmup":  # its own text: it must not prime the KV cache of the measured calls
        return source_text
    nonce = run_nonce(plan.sweep_id, key.config.config_id, key.run_number) if plan.cache_bust else None
    if stage == "report":
        return report_prompt(plan.templates_dir, source_text, nonce)
    return analysis_prompt(plan.templates_dir, source_text, nonce)


def call_stage(ctx: SweepContext, key: RunKey, stage: str, prompt: str, attempt: int,
               record_failure) -> CallResult:
    """One attempt of a streaming call; a failed attempt is handed to ``record_failure``."""
    plan, tel = ctx.plan, ctx.telemetry
    options = dict(key.config.options)
    if stage == "warmup":
        options["num_predict"] = 1
    pid = ctx.server_pid()
    before = hostload.snapshot(pid, time.perf_counter_ns())
    try:
        if tel is not None and tel.enabled:
            with tel.sample_call() as sampler:
                call = _generate(ctx.client, plan, prompt, options)
            call.gpu = sampler.stats.as_row() if sampler.stats else {}
        else:
            call = _generate(ctx.client, plan, prompt, options)
        call.host = _host_load(ctx, before, pid)
        return call
    except Tr111Error as exc:
        partial = exc.partial if isinstance(exc.partial, CallResult) else CallResult(
            model=plan.model, prompt=prompt, options=options,
            started_at=datetime.now(UTC), status="error", error=f"{type(exc).__name__}: {exc}")
        partial.host = _host_load(ctx, before, pid)
        record_failure(call_row(plan, key, stage, attempt, partial))
        raise


def _host_load(ctx: SweepContext, before: hostload.HostSnapshot, pid: int | None) -> dict:
    after = hostload.snapshot(pid, time.perf_counter_ns())
    return hostload.between(before, after, server_on_host=ctx.server_on_host).as_row()


def _generate(client: OllamaClient, plan: SweepPlan, prompt: str, options: dict) -> CallResult:
    return client.generate(plan.model, prompt, options or None)


def classify_run_calls(calls: list[CallResult], *, first_after_restart: bool,
                       options_changed: bool) -> list[tuple[bool, str]]:
    """Cold/warm per call of one run, in execution order (see tr111.coldwarm for the rule)."""

    timings = [CallTiming(load_duration_ms=c.server.load_duration_ms, ttft_ms=c.ttft_ms,
                          first_after_restart=first_after_restart and i == 0,
                          options_changed=options_changed and i == 0)
               for i, c in enumerate(calls)]
    return [(d.is_cold, d.reason) for d in classify_cold(timings)]


def truncation(call: CallResult, num_ctx: int | None, cache_bust: bool) -> tuple[bool, str | None]:
    """Did the prompt fit? Ollama silently keeps the tail of a prompt longer than num_ctx."""
    evaluated = call.server.prompt_eval_count
    if num_ctx and evaluated >= num_ctx:
        return True, f"prompt_eval_count {evaluated} >= num_ctx {num_ctx}: the prompt filled the context"
    estimate = len(call.prompt) / CHARS_PER_TOKEN
    if cache_bust and num_ctx and estimate > num_ctx and evaluated < 0.75 * estimate:
        return True, (f"prompt of ~{estimate:.0f} tokens ({len(call.prompt)} chars) > num_ctx {num_ctx},"
                      f" only {evaluated} evaluated")
    return False, None


def call_row(plan: SweepPlan, key: RunKey, stage: str, attempt: int, call: CallResult, *,
             cold: tuple[bool, str] | None = None, num_ctx: int | None = None) -> dict:
    row = call.as_row()
    options = row.pop("options")
    gpu = row.pop("gpu", None) or {}
    host = row.pop("host", None) or {}
    truncated, reason = truncation(call, num_ctx, plan.cache_bust) if call.status == "ok" else (None, None)
    return {
        **row, **gpu, **host, "sweep_id": plan.sweep_id, "config_id": key.config.config_id,
        "run_number": key.run_number, "stage": stage, "attempt": attempt,
        "run_attempt": key.run_attempt, "options_json": to_json(options),
        "is_cold": cold[0] if cold else None, "cold_reason": cold[1] if cold else None,
        "truncated": truncated, "truncation_reason": reason, "prompt_chars": len(call.prompt),
        "num_ctx": num_ctx, "host": plan.host_id,
    }


def run_row(plan: SweepPlan, key: RunKey, *, status: str, started_at: datetime,
            restart: RestartOutcome | None, ingest_ms: float | None, calls: dict[str, CallResult],
            total_ms: float, fingerprint: str | None, error: str | None = None,
            cold: bool | None = None, ingest_cached: bool | None = None) -> dict:
    return {
        "sweep_id": plan.sweep_id, "config_id": key.config.config_id,
        "run_number": key.run_number, "status": status, "cold": cold,
        "restart_ms": restart.duration_ms if restart else None, "ingest_ms": ingest_ms,
        "analysis_ms": _wall(calls.get("analysis")), "report_ms": _wall(calls.get("report")),
        "total_ms": total_ms, "started_at": started_at, "finished_at": datetime.now(UTC),
        "run_attempt": key.run_attempt,
        "restart_strategy": restart.strategy if restart else None, "error": error,
        "corpus_fingerprint": fingerprint, "warmup_ms": _wall(calls.get("warmup")),
        "ingest_cached": ingest_cached, "host": plan.host_id,
    }


def finish_run(plan: SweepPlan, key: RunKey, *, started_at: datetime, t0_ns: int,
               restart: RestartOutcome | None, ingest_ms: float | None, ingest_cached: bool | None,
               fingerprint: str | None, calls: dict[str, CallResult], attempts: dict[str, int],
               error: str | None) -> tuple[dict, list[dict]]:
    """The run row and its call rows, cold/warm and truncation decided on each call."""
    total_ms = elapsed_ms(t0_ns)
    num_ctx = key.config.options.get("num_ctx")
    performed = bool(restart and restart.performed)
    cold = classify_run_calls(list(calls.values()), first_after_restart=performed,
                              options_changed=key.follows_other_config and not performed)
    rows = [call_row(plan, key, stage, attempts[stage], call, cold=decision,
                     num_ctx=int(num_ctx) if num_ctx else None)
            for (stage, call), decision in zip(calls.items(), cold)]
    measured = [r for r in rows if r["stage"] != "warmup"]
    run = run_row(plan, key, status="ok" if error is None else "error", started_at=started_at,
                  restart=restart, ingest_ms=ingest_ms, calls=calls, total_ms=total_ms,
                  fingerprint=fingerprint, error=error,
                  cold=measured[0]["is_cold"] if measured else None, ingest_cached=ingest_cached)
    return run, rows


def _wall(call: CallResult | None) -> float | None:
    return call.wall_ms if call is not None else None


def elapsed_ms(t0_ns: int) -> float:
    return (time.perf_counter_ns() - t0_ns) / NS_PER_MS


def tell_lock(holder: str | None) -> None:
    """The warehouse is locked by another process: name it (the CLI prints it once)."""
    progress.emit("warehouse_locked", holder=holder or "another process")


def _after_merge(plan: SweepPlan, outcome: MergeOutcome) -> MergeOutcome:
    if outcome.pending and plan.merge:
        progress.emit("shards_pending", pending=outcome.pending, holder=outcome.holder,
                      warehouse=str(plan.warehouse_path))
    return outcome


def record_attempt(plan: SweepPlan, row: dict) -> MergeOutcome:
    """A failed call attempt: durable at once (a shard), merged if the warehouse is free."""
    return _after_merge(plan, writer.record_call_attempt(plan.warehouse_path, row, on_lock=tell_lock,
                                                         **plan.shard_target))


def record_stage(plan: SweepPlan, run: dict, calls: list[dict], problems: list[dict]) -> MergeOutcome:
    """The finished run: one durable shard (run, calls, ingest problems), then merged with any
    shards a lock left pending; a lock never stops the sweep."""
    return _after_merge(plan, writer.record_run(plan.warehouse_path, {**run, "record_ms": None}, calls,
                                                problems, on_lock=tell_lock, **plan.shard_target))
