"""The measurement worker: the timed call in its own process, same contract as OllamaClient."""

from __future__ import annotations

import os
import signal

import pytest

from tr111.errors import ModelNotFoundError, TransientError
from tr111.run.worker import MeasurementWorker


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
