"""Task wrapper: score unscored reports, render the report folder from the warehouse."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from tr111.report.service import generate


@task(name="render-report", cache_policy=NONE, persist_result=False)
def render_report(sweep: str | None, warehouse: str, out: str, templates_dir: str,
                  threshold_pct: float | None = None) -> str:
    path, _ = generate(warehouse, sweep, out, templates_dir, threshold_pct=threshold_pct)
    return str(path)
