"""Ingest benchmark: ingest_corpus vs a bare walk-and-read of the same files.

Target: ingest of a 10,000-file generated corpus within 1.5x of the bare
walk-and-read (os.walk + open().read()) measured in the same run. All contenders
run once as a warm-up (hot page cache, imports), then alternate, so drift hits
them alike; medians are reported, wall time and this process's CPU time.
Exit status 0 when the default ingest meets the target, 1 otherwise.

    python -m bench.ingest_bench [--files 10000] [--repeats 9] [--workers N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from scripts.generate_corpus import generate
from tr111.ingest.corpus import _worker_count, ingest_corpus

TARGET_RATIO = 1.5


def bare_read_text(root: str) -> int:
    """The reference of the target: os.walk + open().read() (text mode)."""
    total = 0
    for directory, _subdirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as handle:
                total += len(handle.read())
    return total


def bare_read_bytes(root: str) -> int:
    """A stricter floor: the same walk, reading bytes without decoding."""
    total = 0
    for directory, _subdirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                total += len(handle.read())
    return total


def time_once(function, root: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds of this process (worker processes' CPU is not included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(root)
    return time.perf_counter() - wall, time.process_time() - cpu


def run(contenders: dict, root: str, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    for function in contenders.values():  # warm-up
        function(root)
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, function in contenders.items():
            wall, cpu = time_once(function, root)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return ({name: statistics.median(values) for name, values in walls.items()},
            {name: statistics.median(values) for name, values in cpus.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=111)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--workers", type=int, help="also time ingest_corpus(workers=N)")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this directory instead of a temp dir")
    args = parser.parse_args(argv)

    auto_workers = _worker_count(None)
    contenders = {
        "bare walk+read (text)": bare_read_text,
        "bare walk+read (bytes)": bare_read_bytes,
        f"ingest_corpus (default: {auto_workers} process{'es' if auto_workers > 1 else ''})": ingest_corpus,
    }
    if auto_workers > 1:
        contenders["ingest_corpus (workers=1)"] = partial(ingest_corpus, workers=1)
    if args.workers and args.workers != auto_workers:
        contenders[f"ingest_corpus (workers={args.workers})"] = partial(ingest_corpus, workers=args.workers)
    names = list(contenders)

    with tempfile.TemporaryDirectory(prefix="tr111-ingest-bench-") as scratch:
        root = args.keep or Path(scratch) / "corpus"
        if not root.exists():
            generate(root, args.files, args.seed)
        summary = ingest_corpus(root)
        walls, cpus = run(contenders, str(root), args.repeats)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"corpus: {summary.total_files} files {summary.files_by_type}, {summary.total_bytes / 1e6:.1f} MB, "
          f"{len(summary.fields)} fields, {len(summary.problems)} problems")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}; median of {args.repeats} alternating runs after a warm-up")
    print(f"{'':40s} {'wall ms':>9s} {'cpu ms':>9s} {'wall ratio':>11s}")
    bare = walls[names[0]]
    for name in names:
        print(f"{name:40s} {walls[name] * 1000:9.1f} {cpus[name] * 1000:9.1f} {walls[name] / bare:11.2f}")
    ratio = walls[names[2]] / bare
    print(f"default ingest / bare walk+read (text): {ratio:.2f} (target <= {TARGET_RATIO}); "
          f"CPU ratio {cpus[names[2]] / cpus[names[0]]:.2f}")
    print(f"reproduce: python -m bench.ingest_bench --files {args.files} --seed {args.seed} --repeats {args.repeats}"
          + (f" --workers {args.workers}" if args.workers else ""))
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
