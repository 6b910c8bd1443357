"""Write the report folder: technical_report.md, and per config metrics.json + run reports.

Layout follows the study's Appendix E: ``<out>/<sweep_id>/<config_id>/metrics.json``
and the LLM-written report of each run as markdown beside it.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tr111.matrix import validate_id
from tr111.report.context import ReportContext


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _cell(value) -> str:
    """Text for a markdown table cell: model output is data, so pipes and newlines are escaped."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def environment(templates_dir: Path) -> Environment:
    env = Environment(loader=FileSystemLoader(str(templates_dir)), undefined=StrictUndefined,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    env.filters["cell"] = _cell
    return env


def _json_default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _inside(base: Path, path: Path) -> Path:
    """Refuse any path that would land outside the chosen output folder."""
    resolved = path.resolve()
    if base.resolve() not in (resolved, *resolved.parents):
        raise ValueError(f"refusing to write outside {base}: {path}")
    return path


def write_report(ctx: ReportContext, out_dir: Path, templates_dir: Path) -> Path:
    """Render everything for one sweep; returns the technical report's path."""
    sweep_id = validate_id(ctx.sweep["sweep_id"], "sweep id")
    base = Path(out_dir)
    folder = _inside(base, base / sweep_id)
    folder.mkdir(parents=True, exist_ok=True)
    env = environment(templates_dir)
    report_path = folder / "technical_report.md"
    report_path.write_text(env.get_template("report/technical_report.md.j2").render(**ctx.as_dict()),
                           encoding="utf-8")
    run_template = env.get_template("report/run_report.md.j2")
    for config in ctx.configs:
        config_id = validate_id(config["config_id"], "config id")
        config_dir = _inside(base, folder / config_id)
        config_dir.mkdir(exist_ok=True)
        calls = [c for c in ctx.calls if c["config_id"] == config_id]
        runs = [r for r in ctx.runs if r["config_id"] == config_id]
        metrics = {"sweep_id": sweep_id, "config": config, "runs": runs, "llm_calls": calls}
        (config_dir / "metrics.json").write_text(
            json.dumps(metrics, indent=2, default=_json_default), encoding="utf-8")
        reports_dir = config_dir / "reports"
        reports_dir.mkdir(exist_ok=True)
        for call in calls:
            if call["stage"] != "report" or call["status"] != "ok":
                continue
            name = f"run{call['run_number']}_attempt{call['attempt']}.md"
            (reports_dir / name).write_text(
                run_template.render(call=call, sweep=ctx.sweep, config=config), encoding="utf-8")
    return report_path
