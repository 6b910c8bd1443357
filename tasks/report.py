"""Task wrapper: score unscored reports, render the report folder from the warehouse."""

from __future__ import annotations

from dataclasses import replace

from prefect import task
from prefect.cache_policies import NONE

from tr111.report.service import ReportOutcome, generate


@task(name="render-report", cache_policy=NONE, persist_result=False)
def render_report(sweep: str | None, warehouse: str, out: str, templates_dir: str,
                  threshold_pct: float | None = None) -> ReportOutcome:
    """The report's path and summary (the context is dropped: the flow state need not hold it)."""
    outcome = generate(warehouse, sweep, out, templates_dir, threshold_pct=threshold_pct)
    return replace(outcome, context=None)
