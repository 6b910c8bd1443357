"""The report of a fixed warehouse keeps its sections and numbers (a golden copy).

``tests/golden/technical_report.md`` was last regenerated for the per-stage report
(issue 10) from the same fixture rows as before, so TR111's pooled columns (section
4.1) still print the numbers of the earlier golden copy; any change to what the
report says shows up here as a diff. When a change is meant (a new figure, a fixed
formula), regenerate it with ``python -m pytest tests/test_report_golden.py
--update-golden`` and review the diff.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from fixtures_report import CONFIGS, SLOW_FACTOR, START, build_sweep

from tr111.paths import templates_dir
from tr111.report.service import generate

GOLDEN = Path(__file__).parent / "golden" / "technical_report.md"


def render(tmp_path: Path) -> str:
    path = tmp_path / "wh.duckdb"
    build_sweep(path, "night-1", seed=1, started_at=START, scale={CONFIGS[2]: 1 / SLOW_FACTOR})
    build_sweep(path, "night-2", seed=10, started_at=START + timedelta(days=1), failed_attempt=True)
    report = generate(path, "night-2", tmp_path / "out", templates_dir(), threshold_pct=5.0, plots=False).path
    text = report.read_text(encoding="utf-8").replace(str(tmp_path), "<tmp>")
    # the fixture finishes its sweeps "now": the only line that differs between renders
    return re.sub(r"→ [0-9-]+ [0-9:.]+\+00:00 \(status", "→ <finished> (status", text)


def test_report_of_a_fixed_warehouse_matches_the_golden_copy(tmp_path, request):
    text = render(tmp_path)
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(text, encoding="utf-8")
    expected = GOLDEN.read_text(encoding="utf-8")
    if text != expected:
        import difflib

        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            "golden", "now", n=1))
        raise AssertionError("the report differs from tests/golden/technical_report.md:\n" + diff[:6000])
