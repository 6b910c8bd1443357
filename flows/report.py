"""``tr111-report``: render the technical report of a sweep from the warehouse."""

from __future__ import annotations

from prefect import flow

from tasks.report import render_report
from tr111.settings import Settings


@flow(name="tr111-report", persist_result=False)
def tr111_report(sweep: str = "latest", warehouse: str | None = None, out: str | None = None) -> str:
    settings = Settings.build(warehouse_path=warehouse, out_dir=out)
    return render_report(sweep, str(settings.warehouse_path), str(settings.out_dir),
                         str(settings.templates_dir))
