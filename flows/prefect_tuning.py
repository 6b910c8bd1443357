"""Two measured work-arounds that keep a per-run subflow cheap (see docs/performance.md §2).

1. Run subflows start without a heartbeat thread: joining it at teardown costs up to 1 s
   per run (it sleeps in 1 s steps). The sweep flow keeps its own heartbeat, so a crashed
   sweep is still detected.
2. After each run subflow, wait until a local (SQLite-backed) Prefect API has recorded its
   task runs: otherwise the next subflow's tracking task-run INSERT races the server's
   task-run recorder, gets "database is locked" (HTTP 503) and Prefect's client retries
   after 2 s.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit
from uuid import UUID

LOCAL_HOSTS = {None, "127.0.0.1", "localhost", "::1"}


@contextmanager
def subflows_without_heartbeat() -> Iterator[None]:
    """Entered once per sweep: temporary_settings re-validates every setting (~23 ms)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def wait_until_recorded(flow_run_id: UUID | None, expected: int, timeout_s: float = 2.0) -> None:
    """Until the API shows the finished subflow's task runs in final states (bounded)."""
    from prefect.settings import PREFECT_API_URL

    if flow_run_id is None or urlsplit(PREFECT_API_URL.value() or "").hostname not in LOCAL_HOSTS:
        return  # a remote API (Prefect Cloud, PostgreSQL) has no such race
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    client = get_client(sync_client=True)
    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline, previous = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        try:
            task_runs = client.read_task_runs(flow_run_filter=flow_filter)
        except Exception:  # the wait is an optimisation: never fail a sweep over it
            return
        final = all(t.state is not None and t.state.is_final() for t in task_runs)
        if final and (len(task_runs) >= expected or len(task_runs) == previous):
            return  # a failed run has fewer tasks: two equal polls are enough
        previous = len(task_runs) if final else -1
        time.sleep(0.01)
