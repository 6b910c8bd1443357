"""``tr111-run``: one run as its own DAG of tasks in the Prefect UI.

restart-ollama -> ingest -> [warmup-call] -> analysis-call -> report-call -> record
"""

from __future__ import annotations

import time
import uuid
from functools import lru_cache
from datetime import UTC, datetime

from prefect import flow
from prefect.utilities.annotations import quote

from tr111.tasks.stages import ingest, llm_call, record, restart_ollama
from tr111.run import stages as pipeline
from tr111.run.context import SweepContext
from tr111.run.plan import RunKey
from tr111.errors import TerminalError, Tr111Error


def _run_name() -> str:
    from prefect.runtime import flow_run

    key = flow_run.parameters.get("key")
    return getattr(key, "name", "run")


TASKS = ("restart-ollama", "ingest", "analysis-call", "report-call", "record")  # the DAG below


def task_count(warmup: bool) -> int:
    """Tasks one run creates: the five above, plus the warm-up call when the matrix asks for it."""
    return len(TASKS) + int(warmup)


@lru_cache(maxsize=8)
def _tasks(retries: int, backoff_s: float):
    """Task variants built once per retry policy, not on every run (~0.5 ms each)."""
    delays = [backoff_s * 2 ** i for i in range(max(retries, 1))]
    restart_task = restart_ollama.with_options(retries=retries, retry_delay_seconds=delays)
    call_task = llm_call.with_options(retries=retries, retry_delay_seconds=delays)
    stages = ("warmup", *pipeline.STAGES)
    return restart_task, {s: call_task.with_options(name=f"{s}-call") for s in stages}


@flow(name="tr111-run", flow_run_name=_run_name, validate_parameters=False, persist_result=False)
def tr111_run(ctx: SweepContext, key: RunKey, retries: int = 3, backoff_s: float = 1.0) -> dict:
    """Compose the stage tasks; returns the recorded run row."""
    plan = ctx.plan
    restart_task, call_tasks = _tasks(retries, backoff_s)
    started_at, t0, token = datetime.now(UTC), time.perf_counter_ns(), uuid.uuid4().hex
    restart = ingest_ms = cached = fingerprint = state = error = None
    calls: dict = {}
    attempts: dict = {}
    problems: list[dict] = []
    try:
        state = restart_task(quote(ctx), quote(key), return_state=True)
        restart = state.result()
        t_ingest = time.perf_counter_ns()
        state = ingest(str(plan.corpus_dir), token, wait_for=[state], return_state=True)
        ingested = state.result()
        cached = ingested["run_token"] != token
        ingest_ms = pipeline.elapsed_ms(t_ingest) if cached else ingested["ingest_ms"]
        summary = ingested["summary"]
        fingerprint = summary.fingerprint
        problems = [{"path": p.path, "kind": p.kind, "detail": p.detail} for p in summary.problems]
        source = summary.to_prompt_text()
        stages = (("warmup",) if plan.warmup else ()) + pipeline.STAGES
        for stage in stages:
            text = pipeline.WARMUP_PROMPT if stage == "warmup" else source
            state = call_tasks[stage](
                quote(ctx), quote(key), stage, quote(text), wait_for=[state], return_state=True)
            out = state.result()
            calls[stage], attempts[stage] = out["call"], out["attempt"]
            if stage != "warmup":
                source = out["call"].response
    except TerminalError:
        raise
    except Tr111Error as exc:
        error = f"{type(exc).__name__}: {exc}"
    run, rows = pipeline.finish_run(plan, key, started_at=started_at, t0_ns=t0, restart=restart,
                                    ingest_ms=ingest_ms, ingest_cached=cached,
                                    fingerprint=fingerprint, calls=calls, attempts=attempts,
                                    error=error)
    upstream = [state] if state is not None and error is None else None
    record(quote(plan), quote(run), quote(rows), quote(problems), wait_for=upstream)
    return run
