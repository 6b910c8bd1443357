"""Directory scan and per-file read/check/parse for ingest, one chunk at a time.

A chunk is a list of scanned entries; ``ingest_chunk`` turns it into a
ChunkResult (partial statistics, problems, fingerprint lines). The same code runs
in-process or in a worker process, so serial and parallel ingest agree exactly.
Problems travel as (path, kind, detail) tuples to keep pickling cheap.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Iterator

from tr111.ingest.parsers import FieldSink, load_json, parse_csv, parse_markdown, walk_json

FILE_TYPES = {"csv": "csv", "json": "json", "md": "md"}  # lower-case extension -> type
BINARY_PROBE_BYTES = 8192
# O_NOFOLLOW: a file swapped for a symlink after the scan is not followed;
# O_NONBLOCK: one swapped for a FIFO cannot block the open.
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))

# A scanned entry: (relative path, entry kind, absolute path or detail).
# Entry kind: "csv"/"json"/"md" (regular file), "symlink", "special" (FIFO,
# socket, device named like a corpus file), "dir_error" (third item = message).
Entry = tuple[str, str, str]
Problem = tuple[str, str, str]
_name_of = attrgetter("name")


def scan(root_path: str) -> Iterator[Entry]:
    """Yield entries depth-first in name order, never following symlinks; skip hidden names."""
    prefix_len = len(root_path) + 1
    pending = [root_path]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=_name_of)
        except OSError as exc:
            yield directory[prefix_len:] or ".", "dir_error", f"cannot list directory: {exc.strerror or exc}"
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            if name[0] == ".":
                continue
            dot = name.rfind(".")
            file_type = FILE_TYPES.get(name[dot + 1:].lower()) if dot > 0 else None
            if entry.is_symlink():
                if file_type or entry.is_dir():
                    yield entry.path[prefix_len:], "symlink", entry.path
            elif entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            elif file_type:
                kind = file_type if entry.is_file(follow_symlinks=False) else "special"
                yield entry.path[prefix_len:], kind, entry.path
        pending.extend(reversed(subdirs))  # pop() then visits them in name order


def fingerprint_line(rel: str, size: int, mtime_ns: int) -> bytes:
    return f"{rel}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape")


@dataclass
class ChunkResult:
    stats: dict[str, list]  # FieldSink.stats: name -> [count, total, low, high]
    problems: list[Problem] = field(default_factory=list)
    fingerprint_lines: list[bytes] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("csv", "json", "md", "bytes", "parsed", "csv_rows", "json_records", "headings", "tables"), 0))


def ingest_chunk(entries: list[Entry], max_file_bytes: int) -> ChunkResult:
    """Read, check and parse each entry; faults become problems, never exceptions."""
    sink = FieldSink()
    result = ChunkResult(stats=sink.stats)
    problems, lines, counts = result.problems, result.fingerprint_lines, result.counts
    for rel, kind, path in entries:
        if kind not in FILE_TYPES:
            _irregular_entry(rel, kind, path, result)
            continue
        counts[kind] += 1
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            _stat_line(rel, path, result)
            problems.append((rel, "unreadable", f"cannot open: {exc.strerror or exc}"))
            continue
        try:
            info = os.fstat(fd)
            size = info.st_size
            lines.append(fingerprint_line(rel, size, info.st_mtime_ns))
            counts["bytes"] += size
            truncated = size > max_file_bytes
            data = _read_prefix(fd, max_file_bytes if truncated else size) if size else b""
        except OSError as exc:
            problems.append((rel, "unreadable", f"cannot read: {exc.strerror or exc}"))
            continue
        finally:
            os.close(fd)
        if _parse_file(rel, kind, data, size, truncated, max_file_bytes, sink, problems, counts):
            counts["parsed"] += 1
        sink.consumed(len(data))
    sink.flush()
    return result


def _stat_line(rel: str, path: str, result: ChunkResult) -> os.stat_result | None:
    """Fingerprint an entry that is not opened (lstat, as fingerprint_corpus does)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    result.fingerprint_lines.append(fingerprint_line(rel, info.st_size, info.st_mtime_ns))
    if stat.S_ISREG(info.st_mode):
        result.counts["bytes"] += info.st_size
    return info


def _irregular_entry(rel: str, kind: str, path: str, result: ChunkResult) -> None:
    if kind == "dir_error":
        result.problems.append((rel, "unreadable", path))
        return
    info = _stat_line(rel, path, result)
    if kind == "symlink":
        result.problems.append((rel, *_describe_symlink(path)))
    else:
        mode = stat.filemode(info.st_mode) if info else "?"
        result.problems.append((rel, "unreadable", f"not a regular file (mode {mode}); skipped"))


def _describe_symlink(path: str) -> tuple[str, str]:
    """symlink_loop when it points at itself or an ancestor, else symlink_skipped."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink_loop", f"symlink to {target} loops; not followed"
        return "symlink_skipped", f"dangling symlink to {target}; skipped"
    real_target = os.path.realpath(path)
    real_dir = os.path.realpath(os.path.dirname(path))
    if real_dir == real_target or real_dir.startswith(real_target.rstrip(os.sep) + os.sep):
        return "symlink_loop", f"symlink to {target} points at an ancestor directory; not followed"
    return "symlink_skipped", f"symlink to {target} not followed"


def _read_prefix(fd: int, want: int) -> bytes:
    """Read up to ``want`` bytes; one read() for a regular file in practice."""
    data = os.read(fd, want)
    if len(data) >= want or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < want:
        chunk = os.read(fd, want - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _decode(data: bytes, truncated: bool) -> tuple[str, bool]:
    """UTF-8 text and whether it was clean (a leading BOM is dropped)."""
    try:
        text = data.decode("utf-8")
        clean = True
    except UnicodeDecodeError as exc:
        # A cap that cut a multi-byte character in half is not bad encoding.
        if truncated and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            text, clean = data[: exc.start].decode("utf-8", "replace"), True
        else:
            text, clean = data.decode("utf-8", "replace"), False
    if text[:1] == "\ufeff":
        text = text[1:]
    return text, clean


_NON_UTF8 = "not valid UTF-8; decoded with replacement characters"


def _parse_file(rel: str, kind: str, data: bytes, size: int, truncated: bool, cap: int,
                sink: FieldSink, problems: list[Problem], counts: dict[str, int]) -> bool:
    """Check one file's bytes for faults and parse it; True when it contributed data."""
    if not data or data.isspace():
        problems.append((rel, "empty_file", "empty" if not size else "only whitespace"))
        return False
    if data.find(b"\0", 0, BINARY_PROBE_BYTES) != -1:
        problems.append((rel, "binary", f"NUL bytes in the first {BINARY_PROBE_BYTES} bytes; skipped"))
        return False
    if truncated:
        cut = data.rfind(b"\n")
        if cut > 0:
            data = data[: cut + 1]
        problems.append((rel, "too_large", f"{size} bytes; parsed only the first {len(data)} (cap {cap})"))
    try:
        if kind == "json":
            return _parse_json_file(rel, data, truncated, sink, problems, counts)
        text, clean = _decode(data, truncated)
        if not clean:
            problems.append((rel, "non_utf8", _NON_UTF8))
        if kind == "csv":
            outcome = parse_csv(text, sink)
            counts["csv_rows"] += outcome.rows
            if outcome.ragged_rows:
                problems.append((rel, "ragged_csv",
                                 f"{outcome.ragged_rows} row(s) with a field count other than the header's "
                                 f"(first: data row {outcome.first_ragged_row}); those rows skipped"))
        else:
            outcome = parse_markdown(text, sink)
            counts["headings"] += outcome.headings
            counts["tables"] += outcome.tables
    except Exception as exc:  # noqa: BLE001 - a parser bug or RecursionError must not stop ingest
        problems.append((rel, "parse_error", f"{type(exc).__name__}: {exc}; skipped"))
        return False
    return True


def _parse_json_file(rel: str, data: bytes, truncated: bool, sink: FieldSink,
                     problems: list[Problem], counts: dict[str, int]) -> bool:
    """orjson straight from bytes (it validates UTF-8 too); text fallback for the rest."""
    try:
        document = load_json(data)
    except ValueError:
        text, clean = _decode(data, truncated)
        if not clean:
            problems.append((rel, "non_utf8", _NON_UTF8))
        try:
            document = load_json(text)
        except ValueError as exc:
            problems.append((rel, "invalid_json", f"{exc}; skipped"))
            return False
    counts["json_records"] += walk_json(document, sink)
    return True
