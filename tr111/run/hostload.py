"""What the host was doing while a call ran: load average and who used the CPUs.

A call timed on a busy machine measures the machine, not the server. Before and
after each call tr111 reads /proc (Linux): the busy CPU time of the whole host,
of the harness (this process and its children) and, where it runs on this host,
of the server process. What is left, *other* CPU time, is the noise the call met.
A remote server's host cannot be seen; the row says so (``host_visible`` False).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Other processes busy for more than this share of one core during a call: contended.
CONTENDED_CORE_SHARE = 0.25


@dataclass(frozen=True)
class HostSnapshot:
    """Cumulative CPU seconds at one instant (busy = user + nice + system + irq + softirq + steal)."""

    t_ns: int
    host_busy_s: float
    harness_s: float
    server_s: float | None
    load1: float | None


@dataclass(frozen=True)
class HostLoad:
    """The difference of two snapshots: one call's view of the host."""

    load1: float | None
    other_cpu_s: float | None
    server_cpu_s: float | None
    harness_cpu_s: float | None
    wall_s: float
    cpus: int
    contended: bool | None

    def as_row(self) -> dict:
        return {"host_load1": self.load1, "host_other_cpu_s": self.other_cpu_s,
                "host_server_cpu_s": self.server_cpu_s, "host_harness_cpu_s": self.harness_cpu_s,
                "host_contended": self.contended}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def host_busy_s(stat: str | None = None) -> float:
    """Busy CPU seconds of all CPUs since boot, from the first line of /proc/stat."""
    text = stat if stat is not None else _read("/proc/stat")
    if not text:
        return 0.0
    fields = [int(v) for v in text.split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_cpu_s(pid: int | None = None, *, children: bool = False) -> float | None:
    """utime + stime (+ reaped children's) of one process in seconds; None when it is gone."""
    text = _read(f"/proc/{pid or 'self'}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / CLOCK_TICKS


def load1() -> float | None:
    text = _read("/proc/loadavg")
    return float(text.split()[0]) if text else None


def snapshot(server_pid: int | None, t_ns: int) -> HostSnapshot:
    harness = process_cpu_s(None, children=True) or 0.0
    return HostSnapshot(t_ns, host_busy_s(), harness,
                        process_cpu_s(server_pid) if server_pid else None, load1())


def between(a: HostSnapshot, b: HostSnapshot, *, cpus: int | None = None,
            server_on_host: bool = True) -> HostLoad:
    """One call's host load. ``server_on_host`` False: a remote server, nothing to subtract
    and nothing to judge (the other CPU time is this host's, not the server's)."""
    wall_s = max((b.t_ns - a.t_ns) / 1e9, 1e-9)
    cpus = cpus or os.cpu_count() or 1
    harness = max(b.harness_s - a.harness_s, 0.0)
    server = (max(b.server_s - a.server_s, 0.0)
              if a.server_s is not None and b.server_s is not None else None)
    if not server_on_host:
        return HostLoad(b.load1, None, None, harness, wall_s, cpus, None)
    busy = max(b.host_busy_s - a.host_busy_s, 0.0)
    other = max(busy - harness - (server or 0.0), 0.0)
    # /proc/stat ticks at 1/CLK_TCK: below a few ticks a call is too short to judge
    judged = wall_s * CLOCK_TICKS >= 5
    return HostLoad(b.load1, other, server, harness, wall_s, cpus,
                    (other / wall_s > CONTENDED_CORE_SHARE) if judged else None)


def local_server_pid(url: str, name: str = "ollama") -> int | None:
    """The pid of an Ollama serving on this host (its URL on loopback), found by process name."""
    from urllib.parse import urlsplit

    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        comm = _read(f"/proc/{pid}/comm")
        if comm and comm.strip() == name:
            return int(pid)
    return None


def server_on_host(url: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def wait_for_quiet(server_pid: int | None, timeout_s: float, *, window_s: float = 0.5,
                   sleep=None) -> tuple[bool, float]:
    """Sample the host in ``window_s`` windows until one is quiet or ``timeout_s`` passes.

    Returns (quiet, waited seconds). The harness and the server are not "other" load."""
    import time

    sleep = sleep or time.sleep
    t0 = time.perf_counter_ns()
    while True:
        a = snapshot(server_pid, time.perf_counter_ns())
        sleep(window_s)
        load = between(a, snapshot(server_pid, time.perf_counter_ns()))
        waited = (time.perf_counter_ns() - t0) / 1e9
        if load.contended is False:
            return True, waited
        if waited >= timeout_s:
            return False, waited
