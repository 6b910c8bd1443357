"""Prefect artifacts: the report, the aggregate table, progress and regressions on the flow run."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from fixtures_report import CONFIGS, SLOW_FACTOR, START, build_sweep

pytestmark = pytest.mark.usefixtures("prefect_harness")
SLOW = "ctx512_temp0p8"


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return asyncio.run(read())


def test_report_flow_and_sweep_style_publication(tmp_path):
    from prefect import flow
    from prefect.runtime import flow_run

    from tr111.flows.report import tr111_report
    from tr111.tasks import artifacts

    path = tmp_path / "wh.duckdb"
    build_sweep(path, "a1", seed=31, started_at=START, runs=3, scale={SLOW: 1 / SLOW_FACTOR})
    build_sweep(path, "a2", seed=32, started_at=START + timedelta(days=1), runs=3)

    @flow(name="sweep-like")
    def sweep_like() -> dict:
        total = len(CONFIGS) * 3
        progress = artifacts.start_progress("a2", total, 0)
        for done in range(1, total + 1):
            artifacts.advance_progress(progress, done, total, last=f"run{done}", status="ok")
        outcome = tr111_report(sweep="a2", warehouse=str(path), out=str(tmp_path / "out"), publish=False)
        published = artifacts.publish_report_artifacts(outcome.summary, outcome.path)
        return {"id": str(flow_run.id), "progress": progress, **published}

    result = sweep_like()
    assert result["regressions"] == [SLOW] and result["previous"] == "a1"
    found = {a.key: a for a in _artifacts(result["id"])}
    assert set(found) == {"tr111-progress", "tr111-report", "tr111-aggregate", "tr111-regressions"}
    assert found["tr111-progress"].type == "progress" and float(found["tr111-progress"].data) == 100.0
    report = found["tr111-report"]
    assert report.type == "markdown" and "## 4. Aggregate performance analysis" in report.data
    assert "_Plot: Decode and prefill rate per config" in report.data  # images become file paths in the UI
    table = found["tr111-aggregate"]
    rows = __import__("json").loads(table.data)
    assert table.type == "table" and [(r["config"], r["stage"]) for r in rows] == [
        (c, s) for c in CONFIGS for s in ("analysis", "report")]
    regressions = found["tr111-regressions"]
    assert SLOW in regressions.description and f"`{SLOW}` | " in regressions.data

    # tr111-report on its own publishes on its own run
    state = tr111_report(sweep="a2", warehouse=str(path), out=str(tmp_path / "out2"), return_state=True)
    own = {a.key for a in _artifacts(state.state_details.flow_run_id)}
    assert own == {"tr111-report", "tr111-aggregate", "tr111-regressions"}


def test_publishing_never_fails_a_sweep(tmp_path, monkeypatch):
    from tr111.tasks import artifacts

    def boom(*args, **kwargs):
        raise RuntimeError("API down")

    monkeypatch.setattr(artifacts, "_create", boom)
    assert artifacts.start_progress("s", 10, 0) is None
    assert artifacts.advance_progress(None, 1, 10) is None
