"""A tiny flow for the fleet infrastructure test (tests/test_fleet_infra.py).

``fleet-demo`` sleeps, then appends one line to ``out_path``:
``HOST_ID<TAB>start<TAB>end<TAB>label<TAB>pid`` (epoch seconds), written with one O_APPEND
write so concurrent runs on several hosts never interleave within a line.
"""

from __future__ import annotations

import os
import time

from prefect import flow


@flow(name="fleet-demo", persist_result=False, log_prints=False)
def fleet_demo(out_path: str, label: str = "", seconds: float = 1.0) -> str:
    host = os.environ.get("HOST_ID", "?")
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    line = f"{host}\t{start:.6f}\t{end:.6f}\t{label}\t{os.getpid()}\n".encode()
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return host
