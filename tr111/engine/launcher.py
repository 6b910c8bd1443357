"""Run the embedded engine as a child process, for the sweep and for tests.

A subprocess (never a shell) keeps llama.cpp's memory and threads out of the
caller and makes a restart a real process restart, like restarting Ollama.
Readiness is polled with http.client to keep this module's import cheap.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

from tr111.errors import ServerUnavailableError

from .api_models import is_embedded_version
from .models import DEFAULT_MODEL_NAME, normalize_name, packaged_gemma_path

_POLL_INTERVAL_S = 0.01
_LOG_TAIL_BYTES = 4000


_running_engines: weakref.WeakSet[EmbeddedEngine] = weakref.WeakSet()


@atexit.register
def _stop_running_engines() -> None:
    """Engines the caller forgot to stop die with the caller's interpreter."""
    for engine in list(_running_engines):
        engine.stop(timeout_s=2.0)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _package_root() -> str:
    """The directory holding the ``tr111`` package, so the child imports this copy."""
    return str(Path(__file__).resolve().parents[2])


class EmbeddedEngine:
    """The embedded Ollama-compatible server in a child process.

    ``models`` maps Ollama names to GGUF paths; ``gemma3:270m`` is added from
    the bundled package unless given. The port is chosen once and kept across
    restarts, so ``url`` stays valid.
    """

    def __init__(
        self,
        models: dict[str, str | Path] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        threads: int | None = None,
        startup_timeout_s: float = 60.0,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or find_free_port(host)
        self.threads = threads
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = dict(env or {})  # e.g. TR111_ENGINE_WRITE_TIMEOUT_S (see limits.py)
        self.model_files: dict[str, Path] = {normalize_name(name): Path(path) for name, path in (models or {}).items()}
        if normalize_name(DEFAULT_MODEL_NAME) not in self.model_files:
            # Resolve (assemble + verify) once here; restarts then skip the hash check.
            self.model_files[normalize_name(DEFAULT_MODEL_NAME)] = packaged_gemma_path()[0]
        self._owns_log = log_path is None
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"tr111-engine-{self.port}.log"
        self.version: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The child's argv (shown in logs and benchmark output)."""
        argv = [sys.executable, "-m", "tr111.engine", "serve", "--host", self.host, "--port", str(self.port)]
        for name, path in self.model_files.items():
            argv += ["--model", f"{name}={path}"]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        return [*argv, "--exit-with-parent"]

    def start(self) -> EmbeddedEngine:
        """Start the child and wait until /api/version answers; no-op when running."""
        if self.is_running:
            return self
        env = {**os.environ, **self.extra_env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self.command(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        _running_engines.add(self)
        try:
            self.version = self._wait_until_ready()
        except ServerUnavailableError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns once the process is gone."""
        process, self._process = self._process, None
        _running_engines.discard(self)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> float:
        """Stop the process and start a new one; milliseconds until it answers again."""
        started_ns = time.perf_counter_ns()
        self.stop()
        self.start()
        return (time.perf_counter_ns() - started_ns) / 1e6

    def __enter__(self) -> EmbeddedEngine:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
        if self._owns_log and exc is None:  # keep the log when something went wrong
            self.log_path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"EmbeddedEngine(url={self.url!r}, running={self.is_running}, version={self.version!r})"

    # -- internals -----------------------------------------------------------

    def _wait_until_ready(self) -> str:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise ServerUnavailableError(
                    f"embedded engine exited with code {code} before answering; log tail:\n{self._log_tail()}")
            version = self._probe_version()
            if version is not None:
                if not is_embedded_version(version):
                    raise ServerUnavailableError(
                        f"{self.url} answered with version {version!r}: another server holds the port")
                return version
            time.sleep(_POLL_INTERVAL_S)
        raise ServerUnavailableError(
            f"embedded engine did not answer within {self.startup_timeout_s:.0f} s; log tail:\n{self._log_tail()}")

    def _probe_version(self) -> str | None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            connection.request("GET", "/api/version")
            response = connection.getresponse()
            if response.status != 200:
                return None
            return str(json.loads(response.read())["version"])
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            return None
        finally:
            connection.close()

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                log_file.seek(max(0, log_file.tell() - _LOG_TAIL_BYTES))
                return log_file.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
