"""Task wrapper: read the warehouse, render the report folder."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from tr111.report.context import build_context
from tr111.report.render import write_report
from warehouse import open_read_only
from warehouse.reader import resolve_sweep_id


@task(name="render-report", cache_policy=NONE, persist_result=False)
def render_report(sweep: str | None, warehouse: str, out: str, templates_dir: str) -> str:
    with open_read_only(warehouse) as con:
        sweep_id = resolve_sweep_id(con, sweep)
        ctx = build_context(con, sweep_id)
    return str(write_report(ctx, Path(out), Path(templates_dir)))
