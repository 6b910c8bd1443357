"""The two prompts of a run, rendered from Jinja templates under templates/prompts.

Model output is passed in as a *value*; it is never used as template source,
so a response containing ``{{ ... }}`` is inert text.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined


@lru_cache(maxsize=8)
def _environment(templates_dir: str) -> Environment:
    return Environment(loader=FileSystemLoader(templates_dir), undefined=StrictUndefined,
                       autoescape=False, keep_trailing_newline=True)


def run_nonce(sweep_id: str, config_id: str, run_number: int) -> str:
    """A run-unique first line: defeats the server's KV prefix cache across runs."""
    return f"{sweep_id}/{config_id}/run{run_number}"


def analysis_prompt(templates_dir: Path, summary_text: str, nonce: str | None) -> str:
    """The report's build_analysis_prompt: the data summary, asking for an analysis."""
    template = _environment(str(templates_dir)).get_template("prompts/analysis.j2")
    return template.render(summary=summary_text, nonce=nonce)


def report_prompt(templates_dir: Path, analysis_text: str, nonce: str | None) -> str:
    """The report's build_report_prompt: the analysis response, asking for a report."""
    template = _environment(str(templates_dir)).get_template("prompts/report.j2")
    return template.render(analysis=analysis_text, nonce=nonce)
