"""``tr111 fleet setup|worker|sweep``: a sweep over several GPU hosts (docs/fleet.md).

Every command talks to the Prefect server the fleet shares (``PREFECT_API_URL``): a
temporary server would be private to one process, and the hosts could not see it.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_fleet_command(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="sweeps over several GPU hosts (Prefect work pools)")
    actions = fleet.add_subparsers(dest="fleet_action", required=True)
    setup = actions.add_parser("setup", help="work pool, queues, deployments, crash automation")
    setup.add_argument("--hosts", required=True, help="comma-separated host ids, e.g. gpu-a,gpu-b")
    worker = actions.add_parser("worker", help="this host's worker: its queue and the split queue, one run at a time")
    worker.add_argument("--host-id", required=True)
    worker.add_argument("--ollama-url", help="this host's server (default: OLLAMA_HOST)")
    sweep = actions.add_parser("sweep", help="run a fleet sweep from here (the coordinator)")
    sweep.add_argument("--hosts", required=True, help="comma-separated host ids")
    sweep.add_argument("--mode", choices=["split", "replicate"], default="split",
                       help="split: configs go to the next free host; replicate: every config on every host")
    sweep.add_argument("--matrix", default="quick")
    sweep.add_argument("--sweep-id", help="resume (or name) a fleet sweep")
    sweep.add_argument("--shared-dir", help="folder every host and this machine see (shards travel there)")
    sweep.add_argument("--warehouse")
    sweep.add_argument("--out")
    sweep.add_argument("--model")
    sweep.add_argument("--runs", type=int)
    sweep.add_argument("--corpus", help="the corpus path on the hosts (default: the shipped sample)")
    sweep.add_argument("--no-report", action="store_true")


def _hosts(text: str) -> list[str]:
    return [h.strip() for h in text.split(",") if h.strip()]


def _shared_api() -> str:
    from tr111.flows.fleet_setup import shared_api_url

    return shared_api_url()


def worker_command(host_id: str) -> list[str]:
    """The documented ``prefect worker start ...`` line ``tr111 fleet worker`` runs (with this
    interpreter's Prefect, whatever ``prefect`` on PATH may be)."""
    from tr111.fleet.plan import POOL, SPLIT_QUEUE, host_queue

    return [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process",
            "--work-queue", host_queue(host_id), "--work-queue", SPLIT_QUEUE, "--limit", "1",
            "--name", f"tr111-{host_id}"]


def cmd_fleet(args) -> int:
    from tr111.matrix import validate_id

    if args.fleet_action == "worker":
        validate_id(args.host_id, "host id")
        _shared_api()
        # heartbeats let the crash automation see a dead host; polling every 2 s instead of
        # Prefect's 10 s halves the dispatch cost per config (docs/fleet.md)
        env = {"PREFECT_WORKER_QUERY_SECONDS": "2", **os.environ, "HOST_ID": args.host_id,
               "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
        if args.ollama_url:
            env["OLLAMA_HOST"] = args.ollama_url
        argv = worker_command(args.host_id)
        print("tr111 fleet worker: " + " ".join(argv), file=sys.stderr)
        os.execve(argv[0], argv, env)  # the worker is this process from here on
    if args.fleet_action == "setup":
        _shared_api()
        from tr111.fleet.plan import FleetRequest
        from tr111.flows.fleet_setup import setup

        hosts = FleetRequest.build(hosts=_hosts(args.hosts), shared_dir=".").hosts
        done = setup(hosts)
        print(f"pool {done['pool']}: queues {', '.join(done['queues'])}")
        print(f"deployments: tr111-fleet-config/host, tr111-fleet/nightly; automation {done['automation']}")
        return 0
    _shared_api()
    from tr111.flows.fleet import tr111_fleet

    result = tr111_fleet(hosts=_hosts(args.hosts), mode=args.mode, matrix=args.matrix,
                         sweep_id=args.sweep_id, shared_dir=args.shared_dir, warehouse=args.warehouse,
                         out=args.out, model=args.model, runs=args.runs, corpus=args.corpus,
                         report=not args.no_report)
    print(f"fleet id: {result['fleet_id']} ({result['mode']})")
    for sweep_id, status in result["sweeps"].items():
        print(f"sweep {sweep_id}: {status}" + (f", report {result['reports'][sweep_id]}"
                                               if result.get("reports") else ""))
    return 0 if all(s == "completed" for s in result["sweeps"].values()) else 1
