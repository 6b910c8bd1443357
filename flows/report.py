"""``tr111-report``: render the technical report of a sweep from the warehouse, publish its artifacts."""

from __future__ import annotations

from prefect import flow

from tr111.tasks.artifacts import publish_report_artifacts
from tr111.report.service import ReportOutcome
from tr111.tasks.report import render_report
from tr111.settings import Settings


@flow(name="tr111-report", persist_result=False)
def tr111_report(sweep: str = "latest", warehouse: str | None = None, out: str | None = None,
                 publish: bool = True) -> ReportOutcome:
    """The report's path and summary. ``publish``: the report, aggregate table and regression check
    as artifacts of this flow run (the sweep flow passes False and publishes them on its own run)."""
    settings = Settings.build(warehouse_path=warehouse, out_dir=out)
    outcome = render_report(sweep, str(settings.warehouse_path), str(settings.out_dir),
                            str(settings.templates_dir), settings.regression_threshold_pct)
    if publish:
        publish_report_artifacts(outcome.summary, outcome.path)
    return outcome
