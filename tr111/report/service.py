"""One call that does a report: score what is unscored, build the context, write the folder.

Used by ``tr111 report`` and the tr111-report flow; imports no Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tr111.report.context import ReportContext, build_context
from tr111.report.render import report_folder, write_raw, write_report
from tr111.report.scoring import ensure_quality_scores
from tr111.report.summary import SweepSummary

MEMORY_LIMIT = "64MB"  # DuckDB's buffer pool for the report's read-only connection


@dataclass(frozen=True)
class ReportOutcome:
    """A rendered report: its path and the summary every other output publishes."""

    path: Path
    summary: SweepSummary
    context: ReportContext | None = field(default=None, repr=False, compare=False)


def resolve(warehouse: str | Path, sweep: str | None) -> str:
    from tr111.warehouse import open_read_only
    from tr111.warehouse.reader import resolve_sweep_id

    with open_read_only(warehouse) as con:
        return resolve_sweep_id(con, sweep)


def generate(warehouse: str | Path, sweep: str | None, out_dir: str | Path, templates_dir: str | Path, *,
             threshold_pct: float | None = None, plots: bool = True) -> ReportOutcome:
    """Render ``<out_dir>/<sweep_id>/technical_report.md`` and everything beside it."""
    sweep_id = resolve(warehouse, sweep)
    from tr111.errors import Tr111Error
    from tr111.run.lease import reconcile

    try:
        reconcile(Path(warehouse))  # a sweep whose process died reads "interrupted", not "running"
    except Tr111Error:
        pass  # a read-only or locked warehouse: the report still renders what is recorded
    _, unstored = ensure_quality_scores(warehouse, sweep_id)
    # Phases in sequence, the warehouse closed while plotting: the peak footprint is the
    # largest phase, not the sum (DuckDB's buffers are released before matplotlib loads).
    def read(con):
        ctx = build_context(con, sweep_id, threshold_pct=threshold_pct, extra_scores=unstored,
                            score_missing=False)
        folder = report_folder(Path(out_dir), sweep_id)
        write_raw(con, ctx, Path(out_dir), folder, Path(templates_dir))
        return ctx

    ctx = _with_connection(warehouse, read)
    path = write_report(ctx, Path(out_dir), Path(templates_dir), plots=plots, raw=False)
    return ReportOutcome(path=path, summary=ctx.summary, context=ctx)


def _with_connection(warehouse, work):
    """Run ``work(con)`` on a read-only connection with a small buffer pool; should a query
    need more memory than the cap, run it again without it."""
    import duckdb

    from tr111.warehouse import open_read_only

    with open_read_only(warehouse) as con:
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        try:
            return work(con)
        except duckdb.OutOfMemoryException:
            con.execute("RESET memory_limit")
            return work(con)
