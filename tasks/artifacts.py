"""Prefect artifacts of a sweep: the report, the aggregate table, progress, regressions.

Call these inside a flow run (they attach to the run in context), or pass
``flow_run_id`` to attach to another run. They never raise: a Prefect API
that is down must not fail a sweep whose rows are already in the warehouse;
a failure is logged and None / an empty result comes back.

Sweep flow wiring (flows/sweep.py)::

    progress_id = artifacts.start_progress(sweep_id, total, done)     # at sweep start
    artifacts.advance_progress(progress_id, done, total, last=key.name, status=row["status"])  # per run
    outcome = tr111_report(..., publish=False)                        # a ReportOutcome
    published = artifacts.publish_report_artifacts(outcome.summary, outcome.path)
    published["regressions"]  # the flagged config ids
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from uuid import UUID

from tr111.report import formatting
from tr111.report.summary import SweepSummary

LOG = logging.getLogger("tr111.artifacts")
KEYS = {"report": "tr111-report", "aggregate": "tr111-aggregate", "regressions": "tr111-regressions",
        "progress": "tr111-progress"}
MAX_MARKDOWN = 900_000  # characters; beyond, the artifact links to the file instead of embedding it


def _quiet(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # an unreachable API or no run context: log, never fail the sweep
            LOG.warning("tr111: could not publish a Prefect artifact (%s): %s", fn.__name__, exc)
            return None
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _create(kind: str, *, key: str | None, description: str, flow_run_id: UUID | str | None,
            **data: Any) -> UUID:
    from prefect.artifacts import MarkdownArtifact, ProgressArtifact, TableArtifact

    cls = {"markdown": MarkdownArtifact, "table": TableArtifact, "progress": ProgressArtifact}[kind]
    extra = {"flow_run_id": UUID(str(flow_run_id))} if flow_run_id else {}
    artifact = cls(key=key, description=description, **data, **extra)
    return artifact.create(_sync=True).id  # type: ignore[call-arg]


@_quiet
def start_progress(sweep_id: str, total: int, done: int = 0, *,
                   flow_run_id: UUID | str | None = None) -> UUID | None:
    """A progress artifact for the sweep: done / total runs, in percent."""
    return _create("progress", key=KEYS["progress"], flow_run_id=flow_run_id,
                   progress=_pct(done, total),
                   description=f"sweep {sweep_id}: {done} of {total} runs done")


@_quiet
def advance_progress(artifact_id: UUID | None, done: int, total: int, *, last: str | None = None,
                     status: str | None = None) -> None:
    """Set the progress artifact to done / total; ``last``/``status`` describe the run just finished."""
    if artifact_id is None:
        return None
    from prefect.artifacts import update_progress_artifact

    text = f"{done} of {total} runs done" + (f"; last: {last} ({status})" if last else "")
    update_progress_artifact(artifact_id, _pct(done, total), description=text)
    return None


def _pct(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 100.0


def _artifact_markdown(report: str, folder: Path) -> str:
    """The report for the UI: image links (files beside the report) become their paths."""
    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)",
                  lambda m: f"_Plot: {m.group(1)} — `{folder / m.group(2)}`_", report)
    if len(text) > MAX_MARKDOWN:
        head = text[:MAX_MARKDOWN].rsplit("\n## ", 1)[0]
        text = head + f"\n\n_The report continues in `{folder / 'technical_report.md'}`._\n"
    return text


def aggregate_table(summary: SweepSummary) -> list[dict]:
    """Rows of the table artifact, one per config and stage (numbers as in the report's section 4)."""
    def r(value, digits=2):
        return None if value is None else round(value, digits)

    def ci(d):
        text = formatting.ci(d)
        return None if text == formatting.NA else text

    return [{"config": a.config_id, "stage": st.stage, "calls": st.calls, "warm_calls": st.warm_calls,
             "truncated": st.truncated, "prompt_tokens": r(st.prompt_tokens, 1),
             "decode_tok_s": r(st.decode_tps.geo_mean), "decode_ci95": ci(st.decode_tps),
             "decode_cv_pct": r(st.decode_tps.cv_pct), "prefill_tok_s": r(st.prefill_tps.geo_mean),
             "prefill_ci95": ci(st.prefill_tps), "warm_ttft_ms": r(st.warm_ttft_ms.geo_mean),
             "warm_ttft_ci95": ci(st.warm_ttft_ms), "warm_ttft_p95": r(st.warm_ttft_ms.p95),
             "warm_ttft_mean_ms": r(st.warm_ttft_ms.mean), "load_ms": r(st.load_ms),
             "prefill_ms": r(st.prefill_ms), "client_overhead_ms": r(st.overhead_ms),
             "cold_ttft_ms": r(st.cold_ttft_ms.geo_mean),
             "tr111_throughput_all_calls": r(a.study_throughput_tps.mean),
             "tr111_ttft_all_calls_ms": r(a.study_ttft_ms.mean), "quality": r(a.quality_overall, 3)}
            for a in summary.aggregate for st in a.stages]


def regressions_markdown(summary: SweepSummary) -> str:
    """The regression check for the UI: the verdict, then the report's own table."""
    reg = summary.regressions
    if not reg.previous:
        return (f"# Regression check: `{summary.sweep_id}`\n\nNo earlier completed sweep of the same matrix "
                "and model: nothing to compare with.\n")
    flagged = reg.flagged
    lines = [f"# Regression check: `{summary.sweep_id}` vs `{reg.previous}`", "",
             (f"**{len(flagged)} config(s) regressed:** " + ", ".join(f"`{c}`" for c in flagged))
             if flagged else "**No regression.**", "",
             f"Per config and stage, a regression is a change that is significant (Welch on log run means, "
             f"p < {reg.alpha:g}) and worse than {formatting.number(reg.threshold_pct, 1)}% "
             "(decode rate lower or warm TTFT higher).", "",
             formatting.regression_table(reg)]
    return "\n".join(lines) + "\n"


def publish_report_artifacts(summary: SweepSummary, report_path: str | Path, *,
                             flow_run_id: UUID | str | None = None, keyed: bool = True) -> dict[str, Any]:
    """Markdown (the report), table (aggregate) and markdown (regressions) artifacts of a rendered report.

    ``summary`` is the one the report was rendered from (ReportOutcome.summary);
    ``report_path`` is read only for the report's markdown body. Returns
    ``{"sweep_id", "regressions": [flagged config ids], "previous", "artifacts": {name: id}}``;
    the regression list comes back even when publishing fails.
    """
    path = Path(report_path)
    sweep_id = summary.sweep_id
    out: dict[str, Any] = {"sweep_id": sweep_id, "regressions": summary.regressions.flagged,
                           "previous": summary.regressions.previous, "artifacts": {}}

    def key(name: str) -> str | None:
        return KEYS[name] if keyed else None

    out["artifacts"]["report"] = _quiet(_create)(
        "markdown", key=key("report"), flow_run_id=flow_run_id,
        description=f"Technical report of sweep {sweep_id} ({path})",
        markdown=_artifact_markdown(path.read_text(encoding="utf-8"), path.parent))
    out["artifacts"]["aggregate"] = _quiet(_create)(
        "table", key=key("aggregate"), flow_run_id=flow_run_id,
        description=f"Per-stage performance of sweep {sweep_id}: decode and prefill rate, warm TTFT and "
                    "its parts (geometric means, 95% log-scale CIs), with TR111's pooled figures",
        table=aggregate_table(summary))
    flagged = out["regressions"]
    out["artifacts"]["regressions"] = _quiet(_create)(
        "markdown", key=key("regressions"), flow_run_id=flow_run_id,
        description=(f"Sweep {sweep_id}: {len(flagged)} regression(s): {', '.join(flagged)}" if flagged
                     else f"Sweep {sweep_id}: no regression"),
        markdown=regressions_markdown(summary))
    return out
