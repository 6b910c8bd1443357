"""Write the report folder: technical_report.md, its plots, per config metrics.json + run reports.

Layout follows the study's Appendix E: ``<out>/<sweep_id>/<config_id>/metrics.json``
and the LLM-written report of each run as markdown beside it. Raw rows are
streamed (DuckDB COPY, cursor batches), never loaded whole.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tr111.matrix import validate_id
from tr111.report import formatting
from tr111.report.context import ReportContext

BATCH = 256


def environment(templates_dir: Path) -> Environment:
    env = Environment(loader=FileSystemLoader(str(templates_dir)), undefined=StrictUndefined,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters.update(formatting.FILTERS)
    return env


def _json_default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _inside(base: Path, path: Path) -> Path:
    """Refuse any path that would land outside the chosen output folder."""
    resolved = path.resolve()
    if base.resolve() not in (resolved, *resolved.parents):
        raise ValueError(f"refusing to write outside {base}: {path}")
    return path


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _by_config(con: duckdb.DuckDBPyConnection, sql: str, params: list, scratch: Path):
    """Stream ``sql`` (its first column ``_cfg`` = config id, rows ordered by it) as JSON text per config.

    One DuckDB COPY writes newline-delimited JSON; each line is cut back to the
    row's own object and yielded as (config_id, line), so a sweep of any size
    passes through in one scan and constant memory.
    """
    con.execute(f"COPY ({sql}) TO {_sql_path(scratch)} (FORMAT JSON)", params)
    with open(scratch, encoding="utf-8") as src:
        for line in src:
            if not line.startswith('{"_cfg":"'):
                continue
            end = line.index('"', 9)
            config_id = line[9:end]
            rest = line[end + 1:].rstrip("\n")
            yield config_id, "{" + rest[1:] if rest.startswith(",") else "{}"


def _write_arrays(con, sql: str, params: list, scratch: Path, out: dict[str, Path]) -> None:
    """Per config, a JSON array of its rows in ``out[config_id]`` (a file path)."""
    handles: dict[str, Any] = {}
    try:
        for config_id, obj in _by_config(con, sql, params, scratch):
            if config_id not in out:
                continue
            fh = handles.get(config_id)
            if fh is None:
                fh = handles[config_id] = open(out[config_id], "w", encoding="utf-8")
                fh.write("[\n")
            else:
                fh.write(",\n")
            fh.write(obj)
    finally:
        for fh in handles.values():
            fh.write("\n]")
            fh.close()
        scratch.unlink(missing_ok=True)
    for config_id, path in out.items():
        if config_id not in handles:
            path.write_text("[]", encoding="utf-8")


def write_raw(con: duckdb.DuckDBPyConnection, ctx: ReportContext, base: Path, folder: Path,
              templates_dir: Path) -> None:
    """Per config: metrics.json (config, runs, every call) and reports/run<N>_attempt<A>.md."""
    sweep_id = ctx.sweep["sweep_id"]
    env = environment(templates_dir)
    run_template = env.get_template("report/run_report.md.j2")
    by_id = {}
    for config in ctx.configs:
        config_id = validate_id(config["config_id"], "config id")
        config_dir = _inside(base, folder / config_id)
        (config_dir / "reports").mkdir(parents=True, exist_ok=True)
        by_id[config_id] = (config, config_dir)
    parts = {name: {cid: d / f".{name}.json.part" for cid, (_, d) in by_id.items()} for name in ("runs", "calls")}
    try:
        _write_arrays(con, "SELECT config_id AS _cfg, * FROM runs WHERE sweep_id = ? "
                           "ORDER BY config_id, started_at, run_number", [sweep_id],
                      folder / ".runs.ndjson.tmp", parts["runs"])
        _write_arrays(con, "SELECT config_id AS _cfg, * FROM llm_calls WHERE sweep_id = ? "
                           "ORDER BY config_id, started_at, run_number, stage, attempt", [sweep_id],
                      folder / ".calls.ndjson.tmp", parts["calls"])
        for config_id, (config, config_dir) in by_id.items():
            plain = {k: v for k, v in config.items() if k not in ("options", "levels", "show", "ps")}
            with open(config_dir / "metrics.json", "w", encoding="utf-8") as out:
                out.write('{\n"sweep_id": ' + json.dumps(sweep_id) + ',\n"config": '
                          + json.dumps(plain, default=_json_default) + ',\n"runs": ')
                for part, tail in ((parts["runs"][config_id], ',\n"llm_calls": '),
                                   (parts["calls"][config_id], "}\n")):
                    with open(part, encoding="utf-8") as src:
                        shutil.copyfileobj(src, out)
                    out.write(tail)
    finally:
        for group in parts.values():
            for part in group.values():
                part.unlink(missing_ok=True)
    cur = con.cursor()
    cur.execute("""SELECT config_id, run_number, attempt, model, eval_count, throughput_tps, response
                   FROM llm_calls WHERE sweep_id = ? AND stage = 'report' AND status = 'ok'
                   ORDER BY config_id, run_number, attempt""", [sweep_id])
    names = [d[0] for d in cur.description]
    while batch := cur.fetchmany(BATCH):
        for values in batch:
            call = dict(zip(names, values))
            if call["config_id"] not in by_id:
                continue
            config, config_dir = by_id[call["config_id"]]
            target = config_dir / "reports" / f"run{call['run_number']}_attempt{call['attempt']}.md"
            data = run_template.render(call=call, sweep=ctx.sweep, config=config).encode("utf-8")
            try:
                if target.stat().st_size == len(data) and target.read_bytes() == data:
                    continue  # a re-render of an unchanged run: no rewrite
            except FileNotFoundError:
                pass
            target.write_bytes(data)
    cur.close()


def report_folder(out_dir: Path, sweep_id: str) -> Path:
    """``<out_dir>/<sweep_id>``, created; the id is checked so it cannot escape ``out_dir``."""
    base = Path(out_dir)
    folder = _inside(base, base / validate_id(sweep_id, "sweep id"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_report(ctx: ReportContext, out_dir: Path, templates_dir: Path,
                 con: duckdb.DuckDBPyConnection | None = None, *, plots: bool = True,
                 raw: bool = True) -> Path:
    """Render everything for one sweep; returns the technical report's path.

    ``raw``: also the per-config metrics.json and run reports, read through
    ``con`` or, without one, a read-only connection to the context's warehouse.
    """
    base = Path(out_dir)
    folder = report_folder(base, ctx.sweep["sweep_id"])
    if plots:
        from tr111.report.plots import write_plots

        ctx.plots = write_plots(ctx, folder)
    else:  # the templates link plots by name: none drawn means every link is absent
        ctx.plots = {"rates": None, "ttft": None, "sensitivity": {}, "trend": None}
    env = environment(templates_dir)
    report_path = folder / "technical_report.md"
    text = env.get_template("report/technical_report.md.j2").render(**ctx.as_dict())
    report_path.write_text(text, encoding="utf-8")
    ctx.summary = ctx.summary.with_plots(ctx.plots)
    (folder / "summary.json").write_text(ctx.summary.to_json(), encoding="utf-8")
    if not raw:
        return report_path
    if con is not None:
        write_raw(con, ctx, base, folder, templates_dir)
    elif ctx.warehouse_path:
        from tr111.warehouse import open_read_only

        with open_read_only(ctx.warehouse_path) as own:
            write_raw(own, ctx, base, folder, templates_dir)
    return report_path
