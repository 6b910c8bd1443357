"""Durable run shards (tr111.warehouse.shards) and the sweep lease (tr111.run.lease), directly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

import pytest

from tr111.errors import StorageError, SweepLeasedError
from tr111.run import lease
from tr111.warehouse import connect, open_read_only, shards, writer
from tr111.warehouse.reader import finished_runs


def _run(config_id: str, run_number: int, status: str = "ok") -> dict:
    return {"sweep_id": "s1", "config_id": config_id, "run_number": run_number, "status": status,
            "run_attempt": 1, "total_ms": 10.0, "started_at": datetime.now(UTC)}


def _call(config_id: str, run_number: int, stage: str, attempt: int = 1, status: str = "ok") -> dict:
    return {"sweep_id": "s1", "config_id": config_id, "run_number": run_number, "stage": stage,
            "attempt": attempt, "run_attempt": 1, "status": status, "ttft_ms": 5.0,
            "throughput_tps": 50.0, "eval_count": 10}


def _count(path, sql: str) -> int:
    with open_read_only(path) as con:
        return con.execute(sql).fetchone()[0]


def _hold_read_only(path, seconds: float) -> subprocess.Popen:
    """Another process with the warehouse open read-only (as `duckdb -readonly` would)."""
    code = textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(path)!r}, read_only=True)
        print("holding", flush=True)
        time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_shard_is_written_whole_and_merged_once(warehouse_path):
    outcome = writer.record_run(warehouse_path, _run("c1", 1), [_call("c1", 1, "analysis")],
                                [{"path": "a.csv", "kind": "unreadable", "detail": "x"}])
    assert outcome == shards.MergeOutcome(1, 0)
    assert shards.pending_shards(warehouse_path) == []  # merged, then removed
    assert _count(warehouse_path, "SELECT count(*) FROM runs") == 1
    assert _count(warehouse_path, "SELECT count(*) FROM ingest_problems") == 1
    assert _count(warehouse_path, "SELECT count(*) FROM _merged_shards WHERE kind = 'run'") == 1


def test_a_merge_repeated_after_a_crash_changes_nothing(warehouse_path, tmp_path):
    shard = shards.write_shard(warehouse_path, "s1", {
        "runs": writer.arrow_table("runs", [_run("c1", 1)]),
        "llm_calls": writer.arrow_table("llm_calls", [_call("c1", 1, "analysis")])}, "run")
    copy = tmp_path / "copy"
    shutil.copytree(shard, copy)
    assert shards.merge_pending(warehouse_path, "s1").merged == 1
    shutil.copytree(copy, shard)  # as if the process died after COMMIT, before removing the folder
    assert shards.merge_pending(warehouse_path, "s1").merged == 1  # skipped by name, folder removed
    assert shards.pending_shards(warehouse_path) == []
    assert _count(warehouse_path, "SELECT count(*) FROM llm_calls") == 1
    assert _count(warehouse_path, "SELECT count(*) FROM _merged_shards") == 1


def test_a_half_written_shard_is_never_merged(warehouse_path):
    folder = shards.shards_dir(warehouse_path, "s1") / f"{shards.TMP_PREFIX}123-1-abc-run"
    folder.mkdir(parents=True)
    (folder / "runs.parquet").write_bytes(b"PAR1 torn")  # a crash mid-write: never renamed
    assert shards.pending_shards(warehouse_path) == []
    assert shards.merge_pending(warehouse_path) == shards.MergeOutcome(0, 0)


def test_a_lock_leaves_the_shard_pending_names_the_holder_and_merges_when_it_frees(warehouse_path):
    writer.start_sweep(warehouse_path, {"sweep_id": "s1", "status": "running"}, [])
    reader = _hold_read_only(warehouse_path, 60)
    try:
        told = []
        outcome = writer.store(warehouse_path, "s1", "run", {"runs": [_run("c1", 1)],
                                                         "llm_calls": [_call("c1", 1, "analysis")]},
                               merge_wait_s=0.3, on_lock=told.append)
        assert outcome.merged == 0 and outcome.pending == 1
        assert outcome.holder.startswith(f"PID {reader.pid} (") and "python" in outcome.holder
        assert told == [outcome.holder]  # the user is told once, naming the same process
        assert len(shards.pending_shards(warehouse_path, "s1")) == 1  # durable meanwhile
    finally:
        reader.kill()
        reader.wait()
    assert shards.merge_pending(warehouse_path, "s1") == shards.MergeOutcome(1, 0)
    assert _count(warehouse_path, "SELECT count(*) FROM runs") == 1


def test_a_killed_writer_s_shard_counts_as_finished_on_resume(warehouse_path):
    """A run made durable but never merged (kill -9 between the two) is not run again."""
    shards.write_shard(warehouse_path, "s1", {"runs": writer.arrow_table("runs", [_run("c1", 1)])}, "run")
    shards.merge_pending(warehouse_path, "s1")
    with connect(warehouse_path) as con:
        assert finished_runs(con, "s1") == {("c1", 1)}


def test_a_shard_on_a_full_disk_is_one_storage_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "x.parquet"))

    monkeypatch.setattr(shards.pq, "write_table", full)
    with pytest.raises(StorageError, match="^disk full: cannot write .*No space left on device"):
        writer.record_run(tmp_path / "wh.duckdb", _run("c1", 1), [])
    assert shards.pending_shards(tmp_path / "wh.duckdb") == []  # no torn shard left behind


# --- the lease -------------------------------------------------------------------------------

def _lease_holder(warehouse_path, sweep_id: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from tr111.run.lease import SweepLease
        with SweepLease(Path({str(warehouse_path)!r}), {sweep_id!r}, heartbeat_s=0.2):
            print("leased", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "leased"
    return proc


def test_a_second_owner_is_refused_naming_the_first_and_a_dead_owner_is_taken_over(warehouse_path):
    holder = _lease_holder(warehouse_path, "s1")
    try:
        assert lease.is_held(warehouse_path, "s1")
        with pytest.raises(SweepLeasedError) as refused:
            with lease.SweepLease(warehouse_path, "s1"):
                pass
        text = str(refused.value)
        assert f"pid {holder.pid} on {os.uname().nodename}" in text
        assert "--sweep-id s1" in text and "\n" not in text
        assert lease.effective_status(warehouse_path, "s1", "running") == "running"
        time.sleep(0.5)
        beats = lease.read_owner(warehouse_path, "s1")
        assert beats.pid == holder.pid and beats.heartbeat_at > beats.started_at  # heartbeat moves
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not lease.is_held(warehouse_path, "s1")  # the kernel freed the flock with the process
    assert lease.effective_status(warehouse_path, "s1", "running") == "interrupted"
    assert lease.effective_status(warehouse_path, "s1", "completed") == "completed"
    with lease.SweepLease(warehouse_path, "s1") as taken:
        assert taken.previous is not None and taken.previous.pid == holder.pid
        assert lease.read_owner(warehouse_path, "s1").pid == os.getpid()
        taken.outcome = "completed"
    released = lease.read_owner(warehouse_path, "s1")
    assert released.released_at is not None and released.outcome == "completed"
    with lease.SweepLease(warehouse_path, "s1") as again:
        assert again.previous is None  # a cleanly released lease is no take-over


def test_an_owner_on_another_host_with_a_fresh_heartbeat_is_refused(warehouse_path):
    """A shared folder where flock does not reach the other host (NFS): the heartbeat decides."""
    folder = lease.leases_dir(warehouse_path)
    folder.mkdir(parents=True)
    now = datetime.now(UTC).isoformat()
    (folder / "s1.json").write_text(json.dumps(
        {"host": "gpu-node-7", "pid": 4242, "started_at": now, "heartbeat_at": now}))
    with pytest.raises(SweepLeasedError, match="pid 4242 on gpu-node-7"):
        with lease.SweepLease(warehouse_path, "s1"):
            pass
    stale = "2020-01-01T00:00:00+00:00"
    (folder / "s1.json").write_text(json.dumps(
        {"host": "gpu-node-7", "pid": 4242, "started_at": stale, "heartbeat_at": stale}))
    with lease.SweepLease(warehouse_path, "s1") as taken:
        assert taken.previous.host == "gpu-node-7"


def test_a_sweep_whose_owner_died_reads_interrupted_in_the_listing_and_is_marked_so(warehouse_path):
    import json as json_

    from tests.faults_support import cli

    holder = _lease_holder(warehouse_path, "s1")
    writer.start_sweep(warehouse_path, {"sweep_id": "s1", "status": "running", "model": "m",
                                        "matrix_json": '{"runs": 2}', "owner_pid": holder.pid,
                                        "started_at": datetime.now(UTC)},
                       [{"sweep_id": "s1", "config_id": "c1"}, {"sweep_id": "s1", "config_id": "c2"}])
    writer.record_run(warehouse_path, _run("c1", 1), [])
    listed = [json_.loads(line) for line in cli("sweeps", "--warehouse", str(warehouse_path), "--json").stdout.splitlines()]
    assert [(s["status"], s["done"], s["planned"], s["owner_alive"]) for s in listed] == [("running", 1, 4, True)]
    assert lease.reconcile(warehouse_path) == []  # a live owner's sweep is left alone
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    listed = [json_.loads(line) for line in cli("sweeps", "--warehouse", str(warehouse_path), "--json").stdout.splitlines()]
    assert [(s["status"], s["owner"], s["owner_alive"]) for s in listed] == [
        ("interrupted", f"pid {holder.pid} on {os.uname().nodename}", False)]
    table = cli("sweeps", "--warehouse", str(warehouse_path)).stdout
    assert "interrupted" in table and "1/4 runs" in table and "(gone)" in table
    assert lease.reconcile(warehouse_path) == ["s1"]  # what the next sweep or report does
    with open_read_only(warehouse_path) as con:
        assert con.execute("SELECT status, note FROM sweeps").fetchone() == (
            "interrupted", "its process ended without finishing; rerun with its --sweep-id to resume")
