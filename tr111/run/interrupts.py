"""Ctrl-C and SIGTERM that no library on the way can swallow.

A signal raises in the main thread wherever that thread happens to be. Prefect's flow engine
catches a BaseException that arrives after a subflow has reached its final state and only logs
it at debug level ("BaseException was raised after user code finished executing"): a Ctrl-C
landing in that window was lost, and the sweep ran on to its end and exited 0. The handler
installed here raises as before and also remembers the signal on itself (the signal table,
process-wide by nature, is where it lives: no module state), and the sweep checks it between
runs, so a swallowed interrupt still ends the sweep before the next run starts.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

from tr111.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptLatch:
    """A signal handler: raise Interrupted(signum), and remember the first signal seen."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        raise Interrupted(signum)


@contextmanager
def latched_signals() -> Iterator[InterruptLatch | None]:
    """SIGINT and SIGTERM raise Interrupted and are remembered inside the block, unless the
    caller ignores them; outside the main thread (an embedding caller) signals are left alone
    and None is yielded."""
    latch = InterruptLatch()
    try:  # a signal the caller ignores stays ignored (a background job of a script ignores SIGINT)
        previous = {sig: signal.signal(sig, latch) for sig in SIGNALS
                    if signal.getsignal(sig) is not signal.SIG_IGN}
    except ValueError:  # not the main thread
        yield None
        return
    try:
        yield latch
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def raise_if_interrupted() -> None:
    """Raise Interrupted if a latched signal arrived (whether or not its exception got through)."""
    for sig in SIGNALS:
        handler = signal.getsignal(sig)
        if isinstance(handler, InterruptLatch) and handler.signum is not None:
            raise Interrupted(handler.signum)
