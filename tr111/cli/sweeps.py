"""``tr111 sweeps``: every sweep in the warehouse with its status, owner, progress and model.

Read-only. A sweep recorded ``running`` whose owner no longer holds its lease
(tr111.run.lease) is shown as ``interrupted``; finished runs still waiting in shards
(a lock, a kill) are counted beside the merged ones.
"""

from __future__ import annotations

import argparse
import json


def add_sweeps_command(sub: argparse._SubParsersAction) -> None:
    sweeps = sub.add_parser("sweeps", help="list sweeps: status, owner, progress, model")
    sweeps.add_argument("--warehouse")
    sweeps.add_argument("--limit", type=int, default=20, help="newest N sweeps (default 20)")
    sweeps.add_argument("--json", action="store_true", help="one JSON object per sweep")


def sweep_listing(warehouse_path, limit: int) -> list[dict]:
    from tr111.run.lease import effective_status, is_held, read_owner
    from tr111.warehouse import open_read_only
    from tr111.warehouse.reader import rows
    from tr111.warehouse.shards import pending_shards

    with open_read_only(warehouse_path) as con:
        found = rows(con, """
            SELECT s.sweep_id, s.status, s.model, s.started_at, s.finished_at, s.matrix_json,
                   s.owner_host, s.owner_pid,
                   (SELECT count(*) FROM configs c WHERE c.sweep_id = s.sweep_id) AS configs,
                   (SELECT count(*) FROM runs r WHERE r.sweep_id = s.sweep_id AND r.status = 'ok') AS ok_runs
            FROM sweeps s ORDER BY s.started_at DESC NULLS LAST LIMIT ?""", [limit])
    listing = []
    for row in found:
        sweep_id = row["sweep_id"]
        try:
            runs = int(json.loads(row["matrix_json"] or "{}").get("runs") or 0)
        except (ValueError, AttributeError, TypeError):
            runs = 0
        owner = read_owner(warehouse_path, sweep_id)
        live = is_held(warehouse_path, sweep_id)
        if owner is not None:
            host, pid = owner.host, owner.pid
        else:
            host, pid = row["owner_host"], row["owner_pid"]
        listing.append({
            "sweep_id": sweep_id, "status": effective_status(warehouse_path, sweep_id, row["status"]),
            "model": row["model"], "done": row["ok_runs"], "planned": row["configs"] * runs or None,
            "pending_shards": len(pending_shards(warehouse_path, sweep_id)),
            "owner": f"pid {pid} on {host}" if pid else None, "owner_alive": live,
            "heartbeat_at": owner.heartbeat_at if owner and live else None,
            "started_at": row["started_at"].isoformat() if row["started_at"] else None,
            "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None})
    return listing


def cmd_sweeps(args) -> int:
    from tr111.settings import Settings

    settings = Settings.build(warehouse_path=args.warehouse)
    listing = sweep_listing(settings.warehouse_path, args.limit)
    if args.json:
        for item in listing:
            print(json.dumps(item))
        return 0
    if not listing:
        print("no sweeps in the warehouse yet")
        return 0
    header = ("sweep", "status", "progress", "model", "owner", "started (UTC)")
    table = [header]
    for item in listing:
        progress = f"{item['done']}/{item['planned'] or '?'} runs"
        if item["pending_shards"]:
            progress += f" (+{item['pending_shards']} shards pending)"
        owner = (item["owner"] or "-") + ("" if item["owner_alive"] or not item["owner"] else " (gone)")
        table.append((item["sweep_id"], item["status"] or "-", progress, item["model"] or "-", owner,
                      (item["started_at"] or "-")[:19].replace("T", " ")))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
