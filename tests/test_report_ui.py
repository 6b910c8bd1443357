"""The screenshot script end to end: Prefect server, quick sweep, Chromium screenshots (slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prefect_db
from faults_support import write_matrix

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                                 reason="needs Debian's chromium package")]
# the quick matrix less its temperature axis (3 configs instead of 5): the same screens, sooner
MATRIX = """\
model: gemma3:270m
runs: 2
baseline: true
grid:
  num_ctx: [1024, 2048]
options:
  num_predict: 32
restart: per_config
"""


def test_flow_run_page_shows_the_report_table_progress_and_regression_artifacts(tmp_path):
    env = dict(os.environ)
    database = tmp_path / "prefect.db"
    if prefect_db.seed(database):  # the script's server then skips Prefect's migrations
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{database}"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_prefect_ui.py"), "--fake",
                           "--nights", "2", "--matrix", write_matrix(tmp_path, MATRIX), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("artifacts on the flow run:"))
    assert line.split(": ", 1)[1] == "tr111-aggregate, tr111-progress, tr111-regressions, tr111-report"
    for name in ("flow_run_artifacts.png", "report_artifact.png", "aggregate_artifact.png",
                 "regressions_artifact.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
