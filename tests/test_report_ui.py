"""The screenshot script end to end: Prefect server, quick sweep, Chromium screenshots (slow)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                                 reason="needs Debian's chromium package")]


def test_flow_run_page_shows_the_report_table_progress_and_regression_artifacts(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_prefect_ui.py"), "--fake",
                           "--nights", "2", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("artifacts on the flow run:"))
    assert line.split(": ", 1)[1] == "tr111-aggregate, tr111-progress, tr111-regressions, tr111-report"
    for name in ("flow_run_artifacts.png", "report_artifact.png", "aggregate_artifact.png",
                 "regressions_artifact.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
