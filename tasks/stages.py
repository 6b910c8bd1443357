"""The tasks of a run: restart-ollama -> ingest -> [warmup-call] -> analysis-call -> report-call -> record.

Thin wrappers over tr111.run.stages. Retries apply to transient faults only
(tr111.errors.is_transient); terminal ones fail at once. LLM calls are never
cached; ingest is cached by the corpus fingerprint (paths, sizes, mtimes).
"""

from __future__ import annotations

import time
from datetime import timedelta

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import task_run as current_task_run

from tr111.errors import is_transient
from tr111.ingest.corpus import fingerprint_corpus, ingest_corpus
from tr111.run import stages
from tr111.run.context import SweepContext
from tr111.run.plan import RunKey, SweepPlan


def transient_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry TransientError, never TerminalError."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # pragma: no cover - defensive
            exc = err
    return isinstance(exc, BaseException) and is_transient(exc)


def corpus_cache_key(context, parameters) -> str:
    corpus_dir = parameters["corpus_dir"]
    return f"tr111-ingest-{fingerprint_corpus(corpus_dir)}"


@task(name="restart-ollama", cache_policy=NONE, persist_result=False,
      retry_condition_fn=transient_only)
def restart_ollama(ctx: SweepContext, key: RunKey):
    return stages.restart_stage(ctx, key)


@task(name="ingest", cache_key_fn=corpus_cache_key, cache_expiration=timedelta(days=7),
      persist_result=True)
def ingest(corpus_dir: str, run_token: str):
    """Parse the corpus; ``run_token`` marks who really ran it (cache hits keep the first)."""
    t0 = time.perf_counter_ns()
    summary = ingest_corpus(corpus_dir, workers=1)  # no fork inside a threaded worker
    return {"summary": summary, "ingest_ms": stages.elapsed_ms(t0), "run_token": run_token}


@task(name="llm-call", cache_policy=NONE, persist_result=False, retry_condition_fn=transient_only)
def llm_call(ctx: SweepContext, key: RunKey, stage: str, source_text: str):
    plan = ctx.plan
    attempt = key.first_call_attempts.get(stage, 1) + (current_task_run.run_count or 1) - 1
    prompt = stages.build_prompt(plan, key, stage, source_text)
    call = stages.call_stage(ctx, key, stage, prompt, attempt,
                             lambda row: stages.record_attempt(plan, row))
    return {"call": call, "attempt": attempt}


@task(name="record", cache_policy=NONE, persist_result=False, retries=3, retry_delay_seconds=1,
      retry_condition_fn=transient_only)
def record(plan: SweepPlan, run: dict, calls: list[dict], problems: list[dict]):
    t0 = time.perf_counter_ns()
    stages.record_stage(plan, run, calls, problems)
    return stages.elapsed_ms(t0)
