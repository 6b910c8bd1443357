"""``tr111 fleet setup``: the Prefect objects a fleet needs, created idempotently.

* a process work pool ``tr111-fleet`` with the queues ``control`` (the coordinator),
  ``split`` (configs any free host may take) and ``host-<id>`` per host (concurrency 1);
* the deployments ``tr111-fleet-config/host`` (a config's runs on a host) and
  ``tr111-fleet/nightly`` (the coordinator, on ``control``), run from this checkout;
* an automation that marks a fleet flow run Crashed when its heartbeats stop (a host that
  died with its worker): without it the run stays Running forever and the coordinator waits.
  Hosts' workers send heartbeats (``tr111 fleet worker`` sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tr111.fleet.plan import CONTROL_QUEUE, JOB_TAG, POOL, SPLIT_QUEUE, host_queue

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 30  # Prefect's minimum
CRASH_AFTER_S = 90  # three missed heartbeats
AUTOMATION = "tr111-fleet: no heartbeat from a host job means its host is gone"


def shared_api_url() -> str:
    """The Prefect API the fleet shares (PREFECT_API_URL, from the environment or a profile)."""
    from prefect.settings import PREFECT_API_URL

    from tr111.errors import ConfigError

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("a fleet needs the Prefect server its hosts share: set PREFECT_API_URL"
                          " (see docs/fleet.md)")
    return url


def ensure_pool(client, hosts: list[str], pool: str = POOL) -> list[str]:
    """The pool and its queues (existing ones are kept, limits set again); queue names."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkQueueUpdate
    from prefect.exceptions import ObjectAlreadyExists

    try:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    except ObjectAlreadyExists:
        pass
    wanted = {CONTROL_QUEUE: None, SPLIT_QUEUE: None, **{host_queue(h): 1 for h in hosts}}
    existing = {q.name: q for q in client.read_work_queues(work_pool_name=pool)}
    for name, limit in wanted.items():
        if name in existing:
            client.update_work_queue(existing[name].id, concurrency_limit=limit)
        else:
            client.create_work_queue(name=name, work_pool_name=pool, concurrency_limit=limit)
    return list(wanted)


def deploy(pool: str = POOL, source: Path = REPO) -> list[str]:
    """The two fleet deployments, running the flows from ``source`` (this checkout)."""
    from prefect import flow

    host = flow.from_source(source=str(source), entrypoint="flows/fleet.py:tr111_fleet_config")
    coordinator = flow.from_source(source=str(source), entrypoint="flows/fleet.py:tr111_fleet")
    ids = [host.deploy(name="host", work_pool_name=pool, work_queue_name=SPLIT_QUEUE,
                       tags=["tr111", "fleet"], build=False, push=False, print_next_steps=False),
           coordinator.deploy(name="nightly", work_pool_name=pool, work_queue_name=CONTROL_QUEUE,
                              tags=["tr111", "fleet"], build=False, push=False,
                              print_next_steps=False)]
    return [str(i) for i in ids]


def ensure_crash_automation(crash_after_s: float = CRASH_AFTER_S) -> str:
    """Fleet flow runs whose heartbeats stop for ``crash_after_s`` become Crashed (it must exceed
    the hosts' heartbeat interval, HEARTBEAT_S)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    try:
        found = Automation.read(name=AUTOMATION)
    except Exception:  # not found (the exception type moved between Prefect releases)
        found = None
    if found is not None:
        return str(found.id)
    automation = Automation(
        name=AUTOMATION,
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            # host jobs only: the coordinator (tagged "fleet") waits on them with the default,
            # slower heartbeat and must never be taken for a dead host
            match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{JOB_TAG}"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=crash_after_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {crash_after_s:g} s: its host is gone")])
    return str(automation.create().id)


def setup(hosts: list[str], pool: str = POOL, *, crash_after_s: float = CRASH_AFTER_S) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        queues = ensure_pool(client, hosts, pool)
    return {"pool": pool, "queues": queues, "deployments": deploy(pool),
            "automation": ensure_crash_automation(crash_after_s)}
