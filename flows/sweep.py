"""``tr111-sweep``: the matrix's runs one after another, then ``tr111-report``.

One server, one call at a time. Rerunning with the same sweep id resumes:
runs already recorded as ok are not executed again.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from tr111.flows.report import tr111_report
from tr111.flows.prefect_tuning import subflows_without_heartbeat, wait_until_recorded
from tr111.flows.run import tr111_run
from tr111.tasks import artifacts
from tr111 import __version__, progress
from tr111.run import stages as pipeline
from tr111.run.environment import detect_environment
from tr111.ingest.corpus import check_corpus
from tr111.errors import ServerUnavailableError, SweepIncompleteError, TerminalError, Tr111Error
from tr111.matrix import expand, load_matrix, validate_id
from tr111.ollama.client import OllamaClient
from tr111.run.restart import _wait
from tr111.run.server import open_server
from tr111.settings import Settings
from tr111.warehouse import connect, writer
from tr111.warehouse.reader import attempt_counters, finished_runs


def new_sweep_id() -> str:
    return datetime.now(UTC).strftime("sweep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _sweep_name() -> str:
    from prefect.runtime import flow_run

    return flow_run.parameters.get("sweep_id") or "tr111-sweep"


@flow(name="tr111-sweep", flow_run_name=_sweep_name, persist_result=False)
def tr111_sweep(matrix: str = "quick", sweep_id: str | None = None,
                ollama_url: str | None = None, engine: str | None = None,
                model: str | None = None, runs: int | None = None,
                restart: str | None = None, corpus: str | None = None,
                warehouse: str | None = None, out: str | None = None,
                report: bool = True) -> dict:
    settings = Settings.build(ollama_url=ollama_url, engine=engine, corpus_dir=corpus,
                              warehouse_path=warehouse, out_dir=out, restart_strategy=restart)
    sweep_matrix = load_matrix(matrix, model=model, runs=runs)
    configs = expand(sweep_matrix)
    sweep_id = validate_id(sweep_id or new_sweep_id(), "sweep id")
    for config in configs:
        validate_id(config.config_id, "config id")
    check_corpus(settings.corpus_dir)  # an empty corpus fails before any row or restart
    with open_server(settings.engine, settings.ollama_url, sweep_matrix.model,
                     url_explicit=ollama_url is not None, threads=settings.engine_threads,
                     connect_timeout_s=settings.connect_timeout_s) as server:
        progress.emit("server", url=server.url, kind=server.kind, version=server.version,
                      model_file=server.model_file)
        client = OllamaClient(server.url, connect_timeout_s=settings.connect_timeout_s)
        show = client.show(sweep_matrix.model)  # unknown model: terminal, before any row
        strategy = settings.restart_strategy or ("embedded" if server.kind == "embedded" else "unload")
        plan = pipeline.SweepPlan(
            sweep_id=sweep_id, model=sweep_matrix.model, ollama_url=server.url,
            warehouse_path=Path(settings.warehouse_path), templates_dir=Path(settings.templates_dir),
            corpus_dir=Path(settings.corpus_dir), restart_strategy=strategy,
            restart_policy=sweep_matrix.restart, restart_command=tuple(settings.restart_command),
            restart_timeout_s=settings.restart_timeout_s,
            connect_timeout_s=settings.connect_timeout_s, read_timeout_s=settings.read_timeout_s,
            call_timeout_s=settings.call_timeout_s, cache_bust=sweep_matrix.cache_bust,
            warmup=sweep_matrix.warmup, gpu_telemetry=settings.gpu_telemetry)
        env = detect_environment()
        tel = pipeline.telemetry(plan.gpu_telemetry)
        env["gpu_telemetry"] = ("on: " + tel.info.name) if tel is not None and tel.enabled else (
            "off: " + (tel.reason_disabled if tel is not None else "disabled in settings"))
        progress.emit("telemetry", status=env["gpu_telemetry"])
        writer.start_sweep(plan.warehouse_path, {
            "sweep_id": sweep_id, "started_at": datetime.now(UTC), "status": "running",
            "model": plan.model, "ollama_url": server.url, "server_version": server.version,
            "matrix_json": sweep_matrix.to_json(), "host": env["host"], "engine": server.kind,
            "engine_model_file": server.model_file, "tr111_version": __version__,
            "environment_json": json.dumps({**env, "show": _show_digest(show)}, default=str),
            "cache_bust": plan.cache_bust, "warmup": plan.warmup, "corpus_dir": str(plan.corpus_dir),
        }, [_config_row(sweep_id, c, i) for i, c in enumerate(configs)])
        with connect(plan.warehouse_path) as con:
            done = finished_runs(con, sweep_id)
            call_attempts, run_attempts = attempt_counters(con, sweep_id)
        todo = [(c, r) for c in configs for r in range(1, sweep_matrix.runs + 1)
                if (c.config_id, r) not in done]
        total = len(configs) * sweep_matrix.runs
        progress.emit("start", sweep_id=sweep_id, total=total, done=len(done), todo=len(todo))
        progress_id = artifacts.start_progress(sweep_id, total, len(done))
        failed: list[str] = []
        try:
            with subflows_without_heartbeat():
                _run_all(plan, settings, client, todo, call_attempts, run_attempts, failed,
                         progress_id, len(done), total)
        except SweepIncompleteError as exc:
            writer.finish_sweep(plan.warehouse_path, sweep_id, "incomplete", str(exc))
            raise
        except TerminalError as exc:
            writer.finish_sweep(plan.warehouse_path, sweep_id, "failed", str(exc))
            raise
        finally:
            _described.clear()
            client.close()
        status = "completed" if not failed else "completed_with_errors"
        writer.finish_sweep(plan.warehouse_path, sweep_id, status,
                            ("failed runs: " + ", ".join(failed)) if failed else None)
    result = {"sweep_id": sweep_id, "status": status, "failed_runs": failed,
              "warehouse": str(plan.warehouse_path)}
    if report:
        result["report"] = tr111_report(sweep=sweep_id, warehouse=str(plan.warehouse_path),
                                        out=str(settings.out_dir), publish=False)
        published = artifacts.publish_report_artifacts(result["report"])  # on this flow run
        result["regressions"] = published["regressions"]
    return result



def _run_all(plan, settings, client, todo, call_attempts, run_attempts, failed, progress_id,
             done_before: int, total: int) -> None:
    """The runs one after another: one server, one call at a time."""
    for index, (config, run_number) in enumerate(todo):
        key = pipeline.RunKey(
            config=config, run_number=run_number,
            run_attempt=run_attempts.get((config.config_id, run_number), 0) + 1,
            first_call_attempts={s: call_attempts.get((config.config_id, run_number, s), 0) + 1
                                 for s in ("warmup", *pipeline.STAGES)})
        # quote(): Prefect must not link runs to each other through shared values
        state = tr111_run(quote(plan), quote(key), retries=quote(settings.retries),
                          backoff_s=quote(settings.retry_backoff_s), return_state=True)
        wait_until_recorded(state.state_details.flow_run_id, 5 + int(plan.warmup))
        row = state.result()  # re-raises what the subflow raised
        if row["status"] != "ok":
            failed.append(key.name)
            _stop_if_server_gone(client, settings, todo[index:], plan)
        elif config.config_id not in _described:
            _describe(plan, client, config.config_id)
        progress.emit("run", name=key.name, status=row["status"], total_ms=row["total_ms"])
        artifacts.advance_progress(progress_id, done_before + index + 1, total,
                                   last=key.name, status=row["status"])


_described: set[str] = set()


def _describe(plan: pipeline.SweepPlan, client: OllamaClient, config_id: str) -> None:
    """/api/show and /api/ps right after a run: the context length actually in effect."""
    try:
        ps = client.loaded(plan.model)
        show = client.show(plan.model)
    except Tr111Error:
        return
    writer.update_config_server_info(plan.warehouse_path, plan.sweep_id, config_id,
                                     show=_show_digest(show), ps=ps)
    _described.add(config_id)


def _show_digest(show: dict) -> dict:
    """The parts of /api/show worth keeping (the full modelfile/template can be large)."""
    return {k: show.get(k) for k in ("details", "model_info", "modified_at", "capabilities")
            if k in show}


def _stop_if_server_gone(client, settings: Settings, remaining, plan) -> None:
    try:
        _wait(lambda: bool(client.version()), settings.restart_timeout_s, "server gone")
    except ServerUnavailableError:
        names = [f"{c.config_id}-run{r}" for c, r in remaining]
        raise SweepIncompleteError(
            f"server at {plan.ollama_url} did not come back within {settings.restart_timeout_s:g} s;"
            f" unfinished runs ({len(names)}): {', '.join(names) or 'none'}") from None


def _config_row(sweep_id: str, config, position: int) -> dict:
    def num(name, cast):
        value = config.options.get(name)
        return cast(value) if value is not None else None

    return {"sweep_id": sweep_id, "config_id": config.config_id,
            "num_gpu": num("num_gpu", int), "num_ctx": num("num_ctx", int),
            "temperature": num("temperature", float),
            "options_json": json.dumps(config.options, sort_keys=True),
            "is_baseline": config.is_baseline, "position": position}
