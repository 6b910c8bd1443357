"""What the host did during a call, from /proc: parsing, arithmetic, and a real CPU burner."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from tr111.run import hostload

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")


def test_proc_stat_busy_time_excludes_idle_and_iowait():
    stat = "cpu  100 20 30 1000 50 5 5 10 0 0\ncpu0 1 2 3 4\n"
    assert hostload.host_busy_s(stat) == pytest.approx((100 + 20 + 30 + 5 + 5 + 10) / hostload.CLOCK_TICKS)


def test_other_cpu_is_busy_time_minus_harness_and_server():
    a = hostload.HostSnapshot(0, 100.0, 10.0, 5.0, 0.5)
    b = hostload.HostSnapshot(2_000_000_000, 103.0, 10.5, 6.0, 0.7)
    load = hostload.between(a, b, cpus=2)
    assert load.other_cpu_s == pytest.approx(1.5) and load.server_cpu_s == pytest.approx(1.0)
    assert load.harness_cpu_s == pytest.approx(0.5) and load.contended is True  # 0.75 of a core
    quiet = hostload.between(a, hostload.HostSnapshot(2_000_000_000, 101.6, 10.5, 6.0, 0.7), cpus=2)
    assert quiet.contended is False
    remote = hostload.between(a, b, cpus=2, server_on_host=False)
    assert remote.contended is None and remote.other_cpu_s is None  # a host tr111 cannot see
    tiny = hostload.between(a, hostload.HostSnapshot(10_000_000, 103.0, 10.5, 6.0, 0.7), cpus=2)
    assert tiny.contended is None  # a few clock ticks cannot judge a 10 ms call


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_cpu_burner_started_beside_the_call_is_seen_as_other_load():
    """A process this test starts (not the harness, not the server) busy for a whole core."""
    burner = multiprocessing.get_context("fork").Process(target=_burn, args=(3.0,))
    burner.start()
    try:
        time.sleep(0.3)
        a = hostload.snapshot(None, time.perf_counter_ns())
        time.sleep(1.0)
        load = hostload.between(a, hostload.snapshot(None, time.perf_counter_ns()))
    finally:
        burner.join()
    assert load.other_cpu_s > 0.6 and load.contended is True
    quiet, waited = hostload.wait_for_quiet(None, 0.5, window_s=0.2, sleep=lambda s: _burn(s))
    assert waited >= 0.2  # the harness's own busy loop is not "other" load: quiet or timed out


def test_the_engine_or_a_local_ollama_is_found_by_pid():
    assert hostload.process_cpu_s(os.getpid()) is not None
    assert hostload.process_cpu_s(2**22 + 12345) is None
    assert hostload.local_server_pid("http://10.1.2.3:11434") is None  # remote: not looked for
    assert hostload.server_on_host("http://127.0.0.1:11434") and not hostload.server_on_host("http://gpu-a:1")
