"""The measurement worker: the timed call in its own process, same contract as OllamaClient."""

from __future__ import annotations

import os
import signal

import pytest

from tr111 import progress
from tr111.errors import ModelNotFoundError, TransientError
from tr111.run.worker import MeasurementWorker, local_prefect_servers, plan_pinning


@pytest.fixture
def worker(fake_ollama):
    with MeasurementWorker(fake_ollama.url, connect_timeout_s=2, read_timeout_s=5, call_timeout_s=5) as w:
        w.start()
        yield w


def test_the_call_is_timed_in_another_process_and_comes_back_whole(worker, fake_ollama):
    assert worker.pid not in (None, os.getpid())
    call = worker.generate("gemma3:latest", "hello", {"num_predict": 5})
    assert call.status == "ok" and call.response and call.ttft_ms > 0 and call.wall_ms >= call.ttft_ms
    assert call.server.eval_count > 0 and call.options == {"num_predict": 5}


def test_errors_cross_the_pipe_with_their_kind_and_partial_result(worker, fake_ollama):
    fake_ollama.inject("notfound")
    with pytest.raises(ModelNotFoundError) as caught:
        worker.generate("gemma3:latest", "x")
    fake_ollama.inject("drop:2")
    with pytest.raises(TransientError) as dropped:
        worker.generate("gemma3:latest", "x")
    partial = dropped.value.partial
    assert partial.status == "error" and partial.chunks == 2 and partial.error.startswith("TransientError")
    assert caught.value.partial is not None
    assert worker.generate("gemma3:latest", "again").status == "ok"  # the same worker carries on


def test_a_worker_that_dies_is_a_transient_fault_and_is_replaced(worker):
    first = worker.pid
    os.kill(first, signal.SIGKILL)
    with pytest.raises(TransientError, match="worker died"):
        worker.generate("gemma3:latest", "x")
    call = worker.generate("gemma3:latest", "x")  # a fresh worker
    assert call.status == "ok" and worker.pid not in (None, first)


# --- CPU pinning (TR111_PIN_CPUS) ------------------------------------------------------------

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs sched_getaffinity and at least 2 usable CPUs")


def test_the_split_gives_the_worker_one_cpu_and_the_orchestrator_the_rest():
    assert plan_pinning("off", {0, 1, 2, 3}) is None
    assert plan_pinning("auto", {5}) is None  # one CPU: nothing to split
    plan = plan_pinning("auto", {0, 1, 2, 3})
    assert plan.measure == {3} and plan.rest == {0, 1, 2}
    assert "CPU 3" in plan.describe() and "CPU 0,1,2" in plan.describe()
    with pytest.raises(ValueError):
        plan_pinning("sometimes", {0, 1})
    with pytest.raises(ValueError):
        MeasurementWorker("http://127.0.0.1:1", connect_timeout_s=1, read_timeout_s=1, call_timeout_s=1,
                          pin_cpus="sometimes")


@needs_affinity
def test_pinned_the_worker_has_its_own_cpu_and_every_orchestrator_thread_the_others(fake_ollama):
    before = os.sched_getaffinity(0)
    plan = plan_pinning("auto")
    events = []
    unsubscribe = progress.subscribe(lambda event, data: events.append((event, data)))
    try:
        with MeasurementWorker(fake_ollama.url, connect_timeout_s=2, read_timeout_s=5, call_timeout_s=5,
                               pin_cpus="auto") as w:
            w.start()
            assert os.sched_getaffinity(w.pid) == set(plan.measure)
            assert all(os.sched_getaffinity(int(tid)) == set(plan.rest) for tid in os.listdir("/proc/self/task"))
            assert w.generate("gemma3:latest", "hello", {"num_predict": 3}).status == "ok"
            assert w.pinning.startswith("on: ")
            first = w.pid
            os.kill(first, signal.SIGKILL)  # a replacement worker is pinned the same way
            with pytest.raises(TransientError):
                w.generate("gemma3:latest", "x")
            w.start()
            assert w.pid != first and os.sched_getaffinity(w.pid) == set(plan.measure)
    finally:
        unsubscribe()
    assert os.sched_getaffinity(0) == before  # put back when the sweep's worker closes
    assert [d["status"] for e, d in events if e == "cpu_pinning"] == [w.pinning]


@needs_affinity
def test_a_server_tr111_started_goes_with_the_worker_and_comes_back(fake_ollama):
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        before, plan = os.sched_getaffinity(server.pid), plan_pinning("auto")
        with MeasurementWorker(fake_ollama.url, connect_timeout_s=2, read_timeout_s=5, call_timeout_s=5,
                               pin_cpus="auto", server_pid=server.pid) as w:
            w.start()
            assert os.sched_getaffinity(server.pid) == os.sched_getaffinity(w.pid) == set(plan.measure)
            assert f"server pid {server.pid}" in w.pinning
        assert os.sched_getaffinity(server.pid) == before
    finally:
        server.kill()
        server.wait()


@needs_affinity
def test_off_leaves_every_affinity_as_it_was(fake_ollama, monkeypatch):
    monkeypatch.setenv("TR111_PIN_CPUS", "off")  # the setting, when not passed explicitly
    before = os.sched_getaffinity(0)
    with MeasurementWorker(fake_ollama.url, connect_timeout_s=2, read_timeout_s=5, call_timeout_s=5) as w:
        w.start()
        assert os.sched_getaffinity(w.pid) == before and os.sched_getaffinity(0) == before
        assert w.pinning == "off: TR111_PIN_CPUS=off"
    assert os.sched_getaffinity(0) == before


def test_the_pin_cpus_setting_is_validated(monkeypatch):
    from tr111.errors import ConfigError
    from tr111.settings import Settings

    assert Settings.build().pin_cpus == "auto"
    monkeypatch.setenv("TR111_PIN_CPUS", "off")
    assert Settings.build().pin_cpus == "off"
    monkeypatch.setenv("TR111_PIN_CPUS", "yes")
    with pytest.raises(ConfigError):
        Settings.build()


def test_a_local_prefect_server_is_found_among_the_descendants_only():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "prefect.server.api.server"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = local_prefect_servers(os.getpid())
        assert child.pid in found and other.pid not in found
        assert local_prefect_servers(other.pid) == []
    finally:
        for p in (child, other):
            p.kill()
            p.wait()
