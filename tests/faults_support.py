"""Helpers shared by the fault-matrix tests (docs/reliability.md): sweeps in-process or
through the CLI, fault placement by run, and warehouse look-ups.

``cli`` runs ``tr111.cli.main`` in this process (no interpreter start, no Prefect import
and API per call: seconds less per call on 2 cores); ``cli_process`` runs ``python -m
tr111.cli`` for the tests that must kill a process or test the entry point itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from tr111.warehouse import open_read_only

REPO = Path(__file__).resolve().parents[1]

ANALYSIS, REPORT = "Analyse this data", "Technical report:"  # text only that stage's prompt has


def write_matrix(folder: Path, text: str, name: str = "m.yaml") -> str:
    """A matrix file; fault tests name runs in grid order, so it is pinned unless the text sets one."""
    path = folder / name
    if "order:" not in text and text.strip():
        text = text.rstrip("\n") + "\norder: grid\n"
    path.write_text(text)
    return str(path)


def sweep_paths(tmp_path: Path, corpus: Path) -> dict:
    return {"warehouse": str(tmp_path / "wh.duckdb"), "out": str(tmp_path / "reports"),
            "corpus": str(corpus)}


def run_sweep(fake_url: str, matrix: str, paths: dict, *, restart: str = "none", report: bool = False,
              **kw) -> dict:
    """tr111-sweep in-process (under the session's prefect_harness)."""
    from tr111.flows.sweep import tr111_sweep

    return tr111_sweep(matrix=matrix, ollama_url=fake_url, restart=restart, report=report,
                       **paths, **kw)


def at(config_id: str, run_number: int, stage: str | None = None):
    """A fake_ollama.inject_when matcher for one run's call (by its cache-bust line)."""
    tag = f"/{config_id}/run{run_number}."
    marker = {"analysis": ANALYSIS, "report": REPORT, None: ""}[stage]

    def match(body: dict) -> bool:
        prompt = body.get("prompt") or ""
        return tag in prompt and marker in prompt
    match.__name__ = f"at_{config_id}_run{run_number}_{stage}"
    return match


def rows(warehouse: str | Path, sql: str, params: list | None = None) -> list[tuple]:
    with open_read_only(warehouse) as con:
        return con.execute(sql, params or []).fetchall()


def one(warehouse: str | Path, sql: str, params: list | None = None):
    found = rows(warehouse, sql, params)
    return found[0] if found else None


def cli_env(**extra: str) -> dict:
    """Environment for ``python -m tr111.cli`` sharing the harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value() or ""
    env["TR111_RETRY_BACKOFF_S"] = "0.01"
    env["TR111_GPU_TELEMETRY"] = "false"
    env.update(extra)
    return env


def cli_process(*args: str, env: dict | None = None, timeout: float = 180, cwd: Path | None = None
                ) -> subprocess.CompletedProcess:
    """``python -m tr111.cli ARGS`` in a child process (environment: ``cli_env()``)."""
    return subprocess.run([sys.executable, "-m", "tr111.cli", *args], env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=str(cwd or REPO))


@dataclass
class CliResult:
    """What ``cli`` saw: the shape of subprocess.CompletedProcess that the tests read."""

    returncode: int
    stdout: str
    stderr: str


CLI_ENV = {"TR111_RETRY_BACKOFF_S": "0.01", "TR111_GPU_TELEMETRY": "false"}


def cli(*args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None) -> CliResult:
    """``tr111 ARGS`` in this process: ``tr111.cli.main`` with stdout/stderr captured.

    ``env`` sets (None: removes) variables on top of ``CLI_ENV`` for this call only; the
    environment (the CLI sets PREFECT_LOGGING_* itself) and the working directory (default:
    the repository, like ``cli_process``) are restored afterwards. A sweep uses the Prefect
    API of the session's ``prefect_harness``.
    """
    from tr111.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        for key, value in {**CLI_ENV, **(env or {})}.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return CliResult(code, out.getvalue(), err.getvalue())


def forbid_flows(monkeypatch) -> None:
    """Make any start of tr111-sweep fail the test: bad input must stop before Prefect."""
    def tr111_sweep(**kwargs):
        raise AssertionError(f"tr111-sweep started despite bad input: {kwargs}")

    monkeypatch.setitem(sys.modules, "tr111.flows.sweep",
                        types.SimpleNamespace(tr111_sweep=tr111_sweep))


def stderr_lines(done: CliResult | subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def no_duplicate_calls(warehouse: str | Path) -> bool:
    return one(warehouse, "SELECT count(*) FROM (SELECT sweep_id, config_id, run_number, stage, attempt"
                          " FROM llm_calls GROUP BY ALL HAVING count(*) > 1)")[0] == 0
