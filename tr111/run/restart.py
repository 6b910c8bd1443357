"""Restart-Ollama strategies: none, unload, command (argv, never a shell), embedded.

Each returns how long the server took to be ready again, so cold-start cost is
measured rather than mixed into the first call's TTFT.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

from tr111.errors import ConfigError, ServerUnavailableError, Tr111Error
from tr111.ollama.metrics import NS_PER_MS
from tr111.ollama.client import OllamaClient

POLL_S = 0.05


class Restartable(Protocol):
    """The embedded engine's handle (tr111.engine.launcher.EmbeddedEngine)."""

    def restart(self) -> float: ...


@dataclass(frozen=True)
class RestartOutcome:
    strategy: str
    performed: bool
    duration_ms: float


def restart_server(strategy: str, client: OllamaClient, model: str, *, engine: Restartable | None = None,
                   command: Sequence[str] = (), timeout_s: float = 60.0) -> RestartOutcome:
    """Restart (or unload) and wait until ready; ``engine``: the sweep's embedded engine, if any."""
    t0 = time.perf_counter_ns()
    if strategy == "none":
        return RestartOutcome(strategy, False, 0.0)
    if strategy == "unload":
        client.unload(model)
        wait_until(lambda: client.loaded(model) is None, timeout_s, f"{model} still loaded")
    elif strategy == "command":
        if not command:
            raise ConfigError("restart strategy 'command' needs restart_command (an argv list)")
        _run_command(list(command), timeout_s)
        wait_until(lambda: bool(client.version()), timeout_s, "server did not answer after restart")
    elif strategy == "embedded":
        if engine is None:
            raise ConfigError(f"restart strategy 'embedded' but no embedded engine at {client.base_url}")
        engine.restart()
    else:
        raise ConfigError(f"unknown restart strategy {strategy!r}")
    return RestartOutcome(strategy, True, (time.perf_counter_ns() - t0) / NS_PER_MS)


def _run_command(argv: list[str], timeout_s: float) -> None:
    try:
        proc = subprocess.run(argv, shell=False, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise ConfigError(f"restart command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise ServerUnavailableError(f"restart command timed out after {timeout_s:g} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise ServerUnavailableError(f"restart command exited {proc.returncode}: {detail[0]}")


def wait_until(ready, timeout_s: float, what: str) -> None:
    """Poll ``ready()`` until true; connection errors while restarting are expected."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Tr111Error as exc:
            if not isinstance(exc, (ServerUnavailableError,)) and "timed out" not in str(exc):
                raise
            last = exc
        time.sleep(POLL_S)
    raise ServerUnavailableError(f"{what} within {timeout_s:g} s" + (f" ({last})" if last else ""))
