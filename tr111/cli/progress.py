"""A rich progress bar fed by tr111.progress events (the flow knows nothing of it)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from tr111 import progress


@contextmanager
def progress_display() -> Iterator[None]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=False)
    state: dict = {}

    def on_event(event: str, data: dict) -> None:
        if event == "server":
            console.print(f"server: {data['kind']} {data['version']} at {data['url']}"
                          + (f" (model file {data['model_file']})" if data.get("model_file") else ""))
        elif event == "cpu_pinning" and state.get("pinning") != data["status"]:
            state["pinning"] = data["status"]
            console.print(f"CPU pinning {data['status']}")
        elif event == "telemetry":
            console.print(f"GPU telemetry {data['status']}")
        elif event == "start":
            state["task"] = bar.add_task(f"sweep {data['sweep_id']}", total=data["total"],
                                         completed=data["done"])
            bar.start()
        elif event == "quiet_host" and not data["quiet"]:
            console.print(f"host still busy after {data['waited_s']:.0f} s: {data['name']} runs anyway "
                          "(its calls are flagged host_contended)")
        elif event == "lease_taken_over":
            console.print(f"sweep {data['sweep_id']}: its previous owner is gone ({data['previous']});"
                          " resuming it")
        elif event == "warehouse_locked" and state.get("holder") != data["holder"]:
            state["holder"] = data["holder"]  # once per holder, not once per run
            console.print(f"warehouse locked by {data['holder']}: finished runs are kept in shards"
                          " and merged when it frees")
        elif event == "shards_pending":
            state["pending"] = data["pending"]
        elif event == "run" and "task" in state:
            bar.update(state["task"], advance=1, description=f"{data['name']}: {data['status']}")

    unsubscribe = progress.subscribe(on_event)
    try:
        yield
    finally:
        unsubscribe()
        bar.stop()
