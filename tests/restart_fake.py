"""A restart command for the 'command' strategy tests: restarts a fake Ollama process.

    python restart_fake.py PIDFILE PORT up|down LOGFILE [EXTRA ...]

Stops the fake whose pid is in PIDFILE; with ``up`` starts a new one on PORT (detached,
its pid written to PIDFILE), with ``down`` leaves the server dead (a restart that never
brings it back). Appends its argv to LOGFILE so a test can check it got a list, not a
shell line. Not a test module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    pidfile, port, mode, logfile = argv[:4]
    with open(logfile, "a", encoding="utf-8") as log:
        log.write(json.dumps(argv) + "\n")
    try:
        pid = int(open(pidfile).read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10  # gone once its port refuses (a zombie keeps its pid)
        while time.monotonic() < deadline and _answers(int(port)):
            time.sleep(0.02)
    if mode == "up":
        proc = subprocess.Popen(fake_argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        with open(pidfile, "w") as out:
            out.write(str(proc.pid))
    return 0


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def fake_argv(port: str | int) -> list[str]:
    return [sys.executable, "-m", "tr111.fake_ollama", "--port", str(port),
            "--load-ms", "5", "--token-ms", "1", "--tokens", "8"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
