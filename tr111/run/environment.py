"""The machine a sweep ran on, detected at run time for the report's methodology."""

from __future__ import annotations

import os
import platform
import socket
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def detect_environment() -> dict:
    """CPU, memory, OS, Python, and GPUs where an NVIDIA driver answers."""
    env = {
        "host": socket.gethostname(), "os": platform.platform(), "python": sys.version.split()[0],
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": memory_gib(), "gpus": [],
    }
    try:
        from tr111.telemetry.sampler import detect_gpus

        from dataclasses import asdict

        env["gpus"] = [asdict(g) for g in detect_gpus()]
    except Exception:  # telemetry is optional: no driver, no GPUs listed
        env["gpus"] = []
    return env
