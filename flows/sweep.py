"""``tr111-sweep``: the matrix's runs one after another, then ``tr111-report``.

One server, one call at a time. Rerunning with the same sweep id resumes: runs
already recorded as ok are not executed again. Every decision lives in
tr111.run.sweep; this flow composes it with the run subflows and the artifacts.
"""

from __future__ import annotations

from prefect import flow
from prefect.exceptions import TerminationSignal
from prefect.utilities.annotations import quote

from tr111.errors import SweepIncompleteError, TerminalError
from tr111.flows.prefect_tuning import subflows_without_heartbeat, wait_until_recorded
from tr111.flows.report import tr111_report
from tr111.flows.run import task_count, tr111_run
from tr111.run import plan as planning, sweep
from tr111.run.context import open_sweep
from tr111.run.interrupts import raise_if_interrupted
from tr111.settings import Settings
from tr111.tasks import artifacts


def _sweep_name() -> str:
    from prefect.runtime import flow_run

    return flow_run.parameters.get("sweep_id") or "tr111-sweep"


@flow(name="tr111-sweep", flow_run_name=_sweep_name, persist_result=False)
def tr111_sweep(matrix: str = "quick", sweep_id: str | None = None,
                ollama_url: str | None = None, engine: str | None = None,
                model: str | None = None, runs: int | None = None,
                restart: str | None = None, corpus: str | None = None,
                warehouse: str | None = None, out: str | None = None,
                report: bool = True, quiet_host: bool | None = None) -> dict:
    settings = Settings.build(ollama_url=ollama_url, engine=engine, corpus_dir=corpus,
                              warehouse_path=warehouse, out_dir=out, restart_strategy=restart,
                              quiet_host=quiet_host)
    request = sweep.prepare(settings, matrix, model=model, runs=runs, sweep_id=sweep_id)
    sweep_id = request.sweep_id
    with open_sweep(settings, request, url_explicit=ollama_url is not None) as ctx:
        plan = ctx.plan
        start = sweep.begin(ctx, request)
        progress_id = artifacts.start_progress(sweep_id, start.total, start.done)
        failed: list[str] = []
        try:
            with subflows_without_heartbeat():
                for index, key in enumerate(start.todo):
                    sweep.before_run(ctx, key)
                    # quote(): Prefect must not link runs to each other through shared values
                    state = tr111_run(quote(ctx), quote(key), retries=quote(settings.retries),
                                      backoff_s=quote(settings.retry_backoff_s), return_state=True)
                    wait_until_recorded(state.state_details.flow_run_id, task_count(plan.warmup))
                    row = state.result()  # re-raises what the subflow raised
                    sweep.after_run(ctx, key, row, start.todo[index:], failed)
                    artifacts.advance_progress(progress_id, start.done + index + 1, start.total,
                                               last=key.name, status=row["status"])
                raise_if_interrupted()  # a signal during the last run, swallowed on the way
        except SweepIncompleteError as exc:
            sweep.finish(ctx, "incomplete", str(exc))
            raise
        except TerminalError as exc:
            sweep.finish(ctx, "failed", str(exc))
            raise
        except (KeyboardInterrupt, TerminationSignal) as exc:  # the call in flight is abandoned
            sweep.interrupted(ctx, "SIGTERM" if isinstance(exc, TerminationSignal)
                              or getattr(exc, "signum", 2) == 15 else "SIGINT")
            raise
        status, note = planning.final_status(failed)
        sweep.finish(ctx, status, note)
    result = {"sweep_id": sweep_id, "status": status, "failed_runs": failed,
              "warehouse": str(plan.warehouse_path)}
    if report:
        outcome = tr111_report(sweep=sweep_id, warehouse=str(plan.warehouse_path),
                               out=str(settings.out_dir), publish=False)
        published = artifacts.publish_report_artifacts(outcome.summary, outcome.path)  # on this flow run
        result["report"], result["regressions"] = str(outcome.path), published["regressions"]
    return result
