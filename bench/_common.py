"""Helpers shared by the bench/ scripts: statistics, machine load, fake Ollama and Prefect servers.

Nothing here imports Prefect: scripts that need a Prefect API set PREFECT_* environment
variables first (Prefect reads its settings at import) and import it afterwards.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return (f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")


def reproduce_line(module: str, argv: Sequence[str]) -> str:
    """The command that reruns a bench script (``module``: e.g. ``bench.harness_overhead``)."""
    return "reproduce: " + shlex.join(["python", "-m", module, *argv])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def fake_ollama_process(*, token_ms: float, tokens: int, load_ms: float,
                        prompt_ms_per_token: float = 0.0) -> Iterator[str]:
    """The fake Ollama in its own process (no GIL shared with the harness); yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tr111.fake_ollama", "--port", "0", "--token-ms", str(token_ms),
         "--tokens", str(tokens), "--load-ms", str(load_ms),
         "--prompt-ms-per-token", str(prompt_ms_per_token)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("the fake Ollama did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def isolated_prefect_home() -> str:
    """A throw-away PREFECT_HOME (settings are read at import: call before importing prefect)."""
    home = tempfile.mkdtemp(prefix="tr111-bench-prefect-")
    os.environ["PREFECT_HOME"] = home
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_PROFILE", None)
    return home


@contextmanager
def prefect_server(timeout_s: float = 180.0) -> Iterator[str]:
    """`prefect server start` (SQLite under a temp PREFECT_HOME) on a free port; yields the API URL
    and sets PREFECT_API_URL. Stopped on exit."""
    isolated_prefect_home()
    port = free_port()
    log = open(os.path.join(os.environ["PREFECT_HOME"], "server.log"), "w")
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    api = f"http://127.0.0.1:{port}/api"
    import httpx

    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited ({proc.returncode}); see {log.name}")
            try:
                if httpx.get(api + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not answer in time")
            time.sleep(0.3)
        os.environ["PREFECT_API_URL"] = api
        yield api
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run_child(argv: list[str], env: dict | None = None) -> dict:
    """Wall, CPU (child and its descendants) and peak RSS of one command.

    Peak RSS comes from GNU time's %M when /usr/bin/time exists: a child spawned straight
    from this (large) process inherits its high-water mark in ru_maxrss on Linux.
    """
    wrapped = [GNU_TIME, "-f", "tr111-bench-maxrss-kb %M", *argv] if GNU_TIME else argv
    t0 = time.perf_counter()
    proc = subprocess.Popen(wrapped, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {err.strip()[-1500:]}")
    rss_kb = usage.ru_maxrss
    for line in err.splitlines():
        if line.startswith("tr111-bench-maxrss-kb "):
            rss_kb = int(line.split()[1])
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": rss_kb / 1024}
