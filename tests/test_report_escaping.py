"""Strings from outside (server, matrix, corpus) are data in the report, never markup."""

from __future__ import annotations

import json
import re

from fixtures_report import build_sweep

from tr111.paths import templates_dir
from tr111.report.service import generate
from tr111.warehouse import connect

HOSTILE = "x`y\n# Injected heading <img src=x onerror=alert(1)> [link](javascript:alert(1)) ```"


def test_hostile_server_matrix_and_corpus_strings_render_as_text(tmp_path):
    path = tmp_path / "w.duckdb"
    build_sweep(path, "h", seed=2, runs=2, failed_attempt=True)
    env = {"host": HOSTILE, "cpu": "```\n# pwned", "os": HOSTILE, "show": {"details": {
        "quantization_level": HOSTILE, "parameter_size": "<script>alert(1)</script>", "family": HOSTILE}}}
    with connect(path) as con:
        con.execute("UPDATE sweeps SET model = ?, server_version = ?, environment_json = ?, corpus_dir = ?",
                    [HOSTILE, "<script>v</script>\n## v", json.dumps(env), HOSTILE])
        con.execute("INSERT INTO ingest_problems VALUES ('h', 'f', ?, 'unreadable', ?)", [HOSTILE + ".csv", HOSTILE])
        con.execute("UPDATE llm_calls SET model = ?", [HOSTILE + " -->"])
    outcome = generate(path, "h", tmp_path / "out", templates_dir(), plots=False)
    report = outcome.path.read_text(encoding="utf-8")
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert not any("pwned" in h or h.startswith("## v") for h in headings)
    assert not any("Injected" in h for h in headings[1:])  # the title line carries it, escaped
    # outside code spans and fenced blocks (where it is literal text) no markup survives
    prose = re.sub(r"^```.*?^```", "", report, flags=re.S | re.M)
    prose = re.sub(r"(`+)(?:(?!\1).)*?\1", "", prose)
    assert "<img" not in prose and "<script" not in prose and "](javascript" not in prose
    fences = [line for line in report.splitlines() if line.lstrip().startswith("```")]
    assert len(fences) % 2 == 0  # every code block that opens, closes where the template closes it
    assert report.startswith("# Technical Report: x\\`y \\# Injected heading &lt;img")  # the title, as text
    run_reports = list((outcome.path.parent).glob("*/reports/*.md"))
    assert run_reports and all(r.read_text().split("\n", 1)[0].count("-->") == 1 for r in run_reports)
