"""Walk a directory of benchmark results (CSV, JSON, Markdown) into a DataSummary.

This is the agent's "ingest" phase: the summary's numbers go into the analysis
prompt, and its fingerprint keys the cache. Ingest never stops on a bad file;
each fault becomes an IngestProblem. Only an empty or missing corpus raises.

The walk uses os.scandir and never follows symlinks (so a symlink loop cannot
hang it), skips hidden entries, and visits entries sorted by name. Entries are
processed in fixed chunks of CHUNK_ENTRIES whose partial results are merged in
order, so the summary is the same whether the chunks run in this process or,
for large corpora on Linux, in forked worker processes (parsing is CPU-bound
Python; the GIL rules out threads).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import chain, islice
from pathlib import Path

from tr111.errors import EmptyCorpusError
from tr111.ingest.files import FILE_TYPES, ChunkResult, Entry, fingerprint_line, ingest_chunk, scan

DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
CHUNK_ENTRIES = 256  # unit of work; fixed so results do not depend on the worker count
PARALLEL_MIN_ENTRIES = 2048  # smaller corpora stay in one process: fork start-up is not worth it
MAX_AUTO_WORKERS = 8
MIN_AUTO_CPUS = 4


@dataclass(frozen=True)
class FieldStats:
    name: str
    count: int
    mean: float
    min: float
    max: float


@dataclass(frozen=True)
class IngestProblem:
    """One file that was skipped or only partly read; ``path`` is relative to the root."""

    path: str
    kind: str  # invalid_json, ragged_csv, binary, non_utf8, too_large, unreadable,
    # symlink_loop, symlink_skipped, parse_error, empty_file
    detail: str


@dataclass
class DataSummary:
    root: str
    files_by_type: dict[str, int]
    total_files: int
    total_bytes: int
    fields: dict[str, FieldStats]
    markdown_headings: int
    markdown_tables: int
    csv_rows: int
    json_records: int
    problems: list[IngestProblem]
    fingerprint: str
    files_parsed: int = 0  # files that contributed data (total_files minus skipped ones)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable form (for task results and the warehouse)."""
        return asdict(self)

    def to_prompt_text(self, max_fields: int = 20) -> str:
        """Compact summary with the real numbers, for the LLM analysis prompt."""
        by_type = ", ".join(f"{count} {kind.upper()}" for kind, count in sorted(self.files_by_type.items()))
        lines = [
            f"Benchmark data directory: {self.root}",
            f"Files: {self.total_files} ({by_type}), {self.total_bytes / 1024:.1f} KiB; "
            f"{self.files_parsed} parsed.",
            f"CSV rows: {self.csv_rows}; JSON records: {self.json_records}; "
            f"Markdown headings: {self.markdown_headings}, tables: {self.markdown_tables}.",
        ]
        ranked = sorted(self.fields.values(), key=lambda stats: (-stats.count, stats.name))
        if ranked:
            shown = ranked[:max_fields]
            lines.append(f"Numeric fields ({len(shown)} of {len(ranked)}, most frequent first):")
            lines += [
                f"- {s.name}: n={s.count} mean={_num(s.mean)} min={_num(s.min)} max={_num(s.max)}"
                for s in shown
            ]
        else:
            lines.append("Numeric fields: none found.")
        if self.problems:
            counts: dict[str, int] = {}
            for problem in self.problems:
                counts[problem.kind] = counts.get(problem.kind, 0) + 1
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
            examples = "; ".join(f"{p.path}: {p.kind}" for p in self.problems[:3])
            lines.append(f"Ingest problems: {len(self.problems)} ({kinds}), e.g. {examples}.")
        return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.6g}"


def _check_root(root: str | Path) -> str:
    root_path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_path):
        what = "does not exist" if not os.path.exists(root_path) else "is not a directory"
        raise EmptyCorpusError(f"corpus directory {root_path} {what}; expected a folder of CSV/JSON/Markdown results")
    return root_path


def check_corpus(root: str | Path) -> str:
    """Fail fast where ingest would: EmptyCorpusError when ``root`` is missing or holds no
    CSV, JSON or Markdown file (stops at the first one found). Returns the absolute root."""
    root_path = _check_root(root)
    for _rel, kind, _path in scan(root_path):
        if kind in FILE_TYPES:
            return root_path
    raise EmptyCorpusError(f"no CSV, JSON or Markdown files under {root_path}")


def fingerprint_corpus(root: str | Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every entry ingest visits, in walk order.

    Stat only, no reads: cheap enough to key a cache before deciding to ingest.
    Equals DataSummary.fingerprint of an ingest of the same, unchanged tree.
    """
    digest = hashlib.sha256()
    for rel, kind, path in scan(_check_root(root)):
        if kind == "dir_error":
            continue
        try:
            info = os.lstat(path)
        except OSError:
            continue
        digest.update(fingerprint_line(rel, info.st_size, info.st_mtime_ns))
    return digest.hexdigest()


def ingest_corpus(root: str | Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                  workers: int | None = None) -> DataSummary:
    """Read every CSV/JSON/Markdown file under ``root`` into a DataSummary.

    Files larger than ``max_file_bytes`` are parsed from their first
    ``max_file_bytes`` only (cut at the last newline) and reported too_large.
    ``workers``: None uses forked worker processes (up to MAX_AUTO_WORKERS) for
    corpora of at least PARALLEL_MIN_ENTRIES entries on Linux with at least
    MIN_AUTO_CPUS CPUs, else one process; 1 forces one process; n > 1 asks for n.
    Raises EmptyCorpusError when the directory is missing or holds no such file.
    """
    if max_file_bytes < 1:
        raise ValueError("max_file_bytes must be positive")
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    root_path = _check_root(root)
    merged = _Merged()
    for result in _run_chunks(scan(root_path), max_file_bytes, workers):
        merged.add(result)
    counts = merged.counts
    files_by_type = {kind: counts[kind] for kind in ("csv", "json", "md")}
    total_files = sum(files_by_type.values())
    if total_files == 0:
        skipped = f" ({len(merged.problems)} other entries skipped, e.g. {merged.problems[0].path}: " \
                  f"{merged.problems[0].kind})" if merged.problems else ""
        raise EmptyCorpusError(f"no CSV, JSON or Markdown files under {root_path}{skipped}")
    return DataSummary(
        root=root_path,
        files_by_type=files_by_type,
        total_files=total_files,
        total_bytes=counts["bytes"],
        fields={name: FieldStats(name, count, total / count, float(low), float(high))
                for name, (count, total, low, high) in sorted(merged.stats.items())},
        markdown_headings=counts["headings"],
        markdown_tables=counts["tables"],
        csv_rows=counts["csv_rows"],
        json_records=counts["json_records"],
        problems=merged.problems,
        fingerprint=merged.digest.hexdigest(),
        files_parsed=counts["parsed"],
    )


class _Merged:
    """Chunk results folded together in chunk order."""

    def __init__(self) -> None:
        self.stats: dict[str, list] = {}
        self.problems: list[IngestProblem] = []
        self.digest = hashlib.sha256()
        self.counts: dict[str, int] = ChunkResult(stats={}).counts

    def add(self, result: ChunkResult) -> None:
        for name, (count, total, low, high) in result.stats.items():
            stats = self.stats.get(name)
            if stats is None:
                self.stats[name] = [count, total, low, high]
                continue
            stats[0] += count
            stats[1] += total
            stats[2] = min(stats[2], low)
            stats[3] = max(stats[3], high)
        self.problems += [IngestProblem(*problem) for problem in result.problems]
        self.digest.update(b"".join(result.fingerprint_lines))
        for key, value in result.counts.items():
            self.counts[key] += value


def _chunks(entries, size: int):
    iterator = iter(entries)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _worker_count(requested: int | None) -> int:
    """Processes to use. Needs fork: it starts fast and inherits the imported parsers."""
    if sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if multiprocessing.current_process().daemon:  # daemonic processes may not have children
        return 1
    if requested is not None:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    # With 2-3 CPUs the parent's scan and the workers compete (on a loaded 2-CPU box, 2 workers were slower).
    return min(cpus, MAX_AUTO_WORKERS) if cpus >= MIN_AUTO_CPUS else 1


def _run_chunks(entries, max_file_bytes: int, workers: int | None):
    """Yield ChunkResults in chunk order, from worker processes when it pays off."""
    chunks = _chunks(entries, CHUNK_ENTRIES)
    worker_count = _worker_count(workers)
    if worker_count <= 1:
        for chunk in chunks:
            yield ingest_chunk(chunk, max_file_bytes)
        return
    buffered: list[list[Entry]] = []
    if workers is None:  # auto: scan ahead until the corpus is known to be large enough
        for chunk in chunks:
            buffered.append(chunk)
            if len(buffered) * CHUNK_ENTRIES >= PARALLEL_MIN_ENTRIES:
                break
        else:
            for chunk in buffered:
                yield ingest_chunk(chunk, max_file_bytes)
            return
    yield from _run_parallel(chain(buffered, chunks), max_file_bytes, worker_count)


def _run_parallel(chunks, max_file_bytes: int, worker_count: int):
    """Fan chunks out to forked workers, a bounded window in flight, results in order.

    If the pool cannot start or breaks, the remaining chunks run in-process, so
    the result is the same either way.
    """
    try:
        pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            worker_count, mp_context=multiprocessing.get_context("fork"))
    except (OSError, ValueError):
        pool = None
    usable = pool is not None
    in_flight: deque[tuple[list[Entry], Future | None]] = deque()
    max_in_flight = 4 * worker_count

    def result_of(chunk: list[Entry], future: Future | None) -> ChunkResult:
        nonlocal usable
        if future is not None:
            try:
                return future.result()
            except (OSError, RuntimeError):  # BrokenProcessPool is a RuntimeError
                usable = False
        return ingest_chunk(chunk, max_file_bytes)

    try:
        for chunk in chunks:
            future = None
            if usable:
                try:
                    future = pool.submit(ingest_chunk, chunk, max_file_bytes)
                except (OSError, RuntimeError):  # cannot fork, or the pool broke
                    usable = False
            in_flight.append((chunk, future))
            while len(in_flight) >= max_in_flight:
                yield result_of(*in_flight.popleft())
        while in_flight:
            yield result_of(*in_flight.popleft())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
