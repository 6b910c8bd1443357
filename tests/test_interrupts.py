"""A Ctrl-C that Prefect swallows still ends the sweep (tr111.run.interrupts).

A SIGINT that lands just after a run's subflow reached Completed is caught by Prefect's flow
engine and logged at debug level; before the latch, the sweep then ran on to its end and
exited 0.
"""

from __future__ import annotations

import os
import signal

import pytest

from faults_support import one, run_sweep, sweep_paths, write_matrix
from tr111.fake_ollama.server import FakeOllama, FakeTimings
from tr111.errors import Interrupted
from tr111.run.interrupts import InterruptLatch, latched_signals, raise_if_interrupted

MATRIX = """
model: gemma3:270m
runs: 3
baseline: true
restart: never
options:
  num_predict: 4
"""


def test_the_latch_raises_remembers_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    raise_if_interrupted()  # no latch installed: nothing to raise
    with latched_signals() as latch:
        assert isinstance(signal.getsignal(signal.SIGINT), InterruptLatch)
        raise_if_interrupted()  # installed, no signal yet
        with pytest.raises(Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
        assert raised.value.signum == signal.SIGTERM and latch.signum == signal.SIGTERM
        with pytest.raises(Interrupted) as again:  # swallowed or not, it is remembered
            raise_if_interrupted()
        assert again.value.exit_code == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    raise_if_interrupted()  # the latch is gone with its block


def test_a_signal_the_caller_ignores_stays_ignored():
    """A script's background job (``tr111 sweep ... &`` without job control) ignores SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with latched_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert isinstance(signal.getsignal(signal.SIGTERM), InterruptLatch)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_a_sigint_prefect_swallows_after_a_run_completed_still_stops_the_sweep(
        tmp_path, small_corpus, prefect_harness, monkeypatch):
    """The signal is delivered for real, at the moment Prefect swallows it: right after the
    first run's subflow is marked Completed (FlowRunEngine.handle_success)."""
    from prefect.flow_engine import FlowRunEngine

    real_success = FlowRunEngine.handle_success
    sent = []

    def success_then_sigint(self, *args, **kwargs):
        result = real_success(self, *args, **kwargs)
        if self.flow.name == "tr111-run" and not sent:
            sent.append(self.flow_run.name)
            os.kill(os.getpid(), signal.SIGINT)  # os.kill runs the handler before it returns
        return result

    monkeypatch.setattr(FlowRunEngine, "handle_success", success_then_sigint)
    paths = sweep_paths(tmp_path, small_corpus)
    with FakeOllama(FakeTimings(load_ms=5, token_ms=1, tokens=4)) as fake, latched_signals() as latch:
        with pytest.raises(Interrupted) as raised:
            run_sweep(fake.url, write_matrix(tmp_path, MATRIX), paths, sweep_id="swallowed")
        generate_calls = fake.generate_calls
    assert sent and latch.signum == signal.SIGINT and raised.value.signum == signal.SIGINT
    wh = paths["warehouse"]
    status, note = one(wh, "SELECT status, note FROM sweeps")
    assert status == "interrupted" and note.startswith("interrupted by SIGINT")
    assert one(wh, "SELECT count(*) FROM runs") == (1,)  # the run that completed, no other
    assert generate_calls == 2  # its analysis and report calls: the second run never started
