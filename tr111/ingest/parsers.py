"""Lean parsers for the three corpus formats, feeding one FieldSink.

Ingest should cost little more than reading the files, so per-value Python work
is kept out of the hot path: CSV columns are joined as text and parsed in large
batches by orjson (a prefect dependency; stdlib json if it is missing), JSON
leaves are appended to per-field lists, and count/sum/min/max are taken with
C-level builtins when a batch is flushed. No per-value exceptions on good data.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import islice, repeat

try:  # about 10x faster than json/float() at parsing numbers
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson ships with prefect
    _fast_loads = json.loads

# First characters a JSON/float number can start with (blanks allowed). Any
# other start means a text column: skipped without calling float().
_NUMERIC_START = frozenset("0123456789+-. \t")
_NUMBER_START = frozenset("0123456789+-.")
_FLUSH_BYTES = 1 << 20  # bound on buffered input between reductions
_BLOCK_CHARS = 1 << 20  # CSV text handled per block
_BLOCK_ROWS = 20_000  # rows per block on the csv-module path
# Characters that never occur in a JSON number but do in true/false/null, strings and
# arrays: a comma-joined column holding one of them is not a plain list of numbers.
_NOT_NUMBER_CHARS = ("u", "a", '"', "[", "{")


class FieldSink:
    """Running count/sum/min/max per field name, fed in batches.

    ``numbers`` buffers parsed values and ``cells`` buffers comma-joined CSV
    cells still to be parsed; ``flush`` folds both into ``stats``. Flushing after
    every ~1 MiB of input keeps memory flat and the result deterministic.
    """

    def __init__(self) -> None:
        self.stats: dict[str, list] = {}  # name -> [count, total, low, high]
        self.numbers: defaultdict[str, list] = defaultdict(list)
        self.cells: defaultdict[str, list[str]] = defaultdict(list)  # comma-joined columns
        self._buffered_bytes = 0

    def add_numbers(self, name: str, values: list[float]) -> None:
        self.numbers[name] += values

    def consumed(self, size: int) -> None:
        """Note ``size`` input bytes handled; flush when the buffers grow large."""
        self._buffered_bytes += size
        if self._buffered_bytes >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for name, chunks in self.cells.items():
            self.numbers[name] += _parse_chunks(chunks)
        self.cells.clear()
        for name, values in self.numbers.items():
            self._fold(name, values)
        self.numbers.clear()
        self._buffered_bytes = 0

    def _fold(self, name: str, values: list) -> None:
        if not values:
            return
        total = sum(values)
        if not math.isfinite(total):  # NaN/inf from a lenient parse or a huge literal
            values = [value for value in values if math.isfinite(value)]
            if not values:
                return
            total = sum(values)
        low, high = min(values), max(values)
        stats = self.stats.get(name)
        if stats is None:
            self.stats[name] = [len(values), total, low, high]
            return
        stats[0] += len(values)
        stats[1] += total
        if low < stats[2]:
            stats[2] = low
        if high > stats[3]:
            stats[3] = high


def plain_numbers(joined: str) -> list | None:
    """The numbers of a comma-joined column when every cell is a plain JSON number, else None.

    One orjson parse. A cell such as null or true (which orjson turns into None/True),
    quoted text or brackets rules the fast path out: such values must not reach the
    statistics (a null used to make the fold raise TypeError and end the ingest).
    """
    for char in _NOT_NUMBER_CHARS:
        if char in joined:
            return None
    try:
        return _fast_loads("[" + joined + "]")
    except ValueError:
        return None


def _parse_chunks(chunks: list[str]) -> list:
    """Numbers from comma-joined columns: one fast parse, per-column fallback."""
    values = plain_numbers(",".join(chunks))
    if values is not None:
        return values
    values = []
    for chunk in chunks:
        numbers = plain_numbers(chunk)
        # blanks, "1.", "n/a", NaN, null, true: parse cell by cell (lenient_floats skips them)
        values += numbers if numbers is not None else lenient_floats(chunk.split(","))
    return values


def lenient_floats(column) -> list[float]:
    """Numbers of a column whose first non-blank cell is a number, else [].

    Blank or unparsable cells are skipped (NaN/inf are dropped at flush).
    """
    cells = [cell for cell in column if cell.strip()]
    if not cells or cells[0].lstrip()[:1] not in _NUMERIC_START:
        return []
    try:
        values = [float(cells[0])]
    except ValueError:  # "7b-chat": text that happens to start with a digit
        return []
    for cell in cells[1:]:
        try:
            values.append(float(cell))
        except ValueError:
            continue
    return values


@dataclass
class CsvOutcome:
    rows: int
    ragged_rows: int
    first_ragged_row: int  # 1-based data-row number, 0 when none


def parse_csv(text: str, sink: FieldSink) -> CsvOutcome:
    """Header row, then rows; numeric columns feed ``sink`` by header name.

    A column is numeric when its first cell looks like a number. Rows whose
    field count differs from the header's are counted and left out. Large
    texts go in blocks of about 1 MiB so memory stays a small multiple of that.
    """
    quoted = '"' in text
    if quoted:
        rows = filter(None, csv.reader(io.StringIO(text)))
        batches = iter(lambda: list(islice(rows, _BLOCK_ROWS)), [])
    else:  # no quoting: str.split is several times faster than csv.reader
        batches = (list(map(str.split, lines, repeat(","))) for lines in _line_blocks(text))
    outcome = CsvOutcome(0, 0, 0)
    header: list[str] | None = None
    for body in batches:
        if header is None:
            header = [name.strip() for name in body[0]]
            body = body[1:]
        width = len(header)
        widths = set(map(len, body))
        if widths and widths != {width}:
            good_rows = [row for row in body if len(row) == width]
            if not outcome.ragged_rows:
                first = next(i for i, row in enumerate(body, 1) if len(row) != width)
                outcome.first_ragged_row = outcome.rows + outcome.ragged_rows + first
            outcome.ragged_rows += len(body) - len(good_rows)
            body = good_rows
        if body:
            outcome.rows += len(body)
            add_columns(sink, header, zip(*body), cells_may_hold_commas=quoted)
        if len(text) > _BLOCK_CHARS:
            sink.flush()
    return outcome


def _line_blocks(text: str):
    """Non-blank lines, in one list for small texts, else in blocks cut at newlines."""
    start, size = 0, len(text)
    while start < size:
        end = text.find("\n", start + _BLOCK_CHARS) + 1 if size - start > _BLOCK_CHARS else 0
        end = end or size  # 0: the rest fits in one block, or has no further newline
        lines = text[start:end].splitlines()
        start = end
        if "" in lines:  # blank lines are not rows
            lines = [line for line in lines if line]
        if lines:
            yield lines


def add_columns(sink: FieldSink, names: list[str], columns, *, cells_may_hold_commas: bool) -> None:
    """Queue the numeric-looking columns; inlined because it runs for every column."""
    cells = sink.cells
    for name, column in zip(names, columns):
        start = column[0][:1]
        if start == " ":  # padded cell, as in Markdown tables
            start = column[0].lstrip()[:1]
        if start in _NUMBER_START and not cells_may_hold_commas:
            if name:
                cells[name].append(",".join(column))
        elif name and (start in _NUMERIC_START or not column[0].strip()):
            sink.add_numbers(name, lenient_floats(column))  # padded, blank-first or quoted cells


def _no_constants(_literal: str) -> None:
    """NaN/Infinity in JSON become None, so they never reach the statistics."""
    return None


_MAX_FAST_DEPTH = 512  # orjson 3.8 has no depth limit: ~200k nested "[" overflow the C stack
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _shallow(data: bytes | str) -> bool:
    """True when the JSON nests at most _MAX_FAST_DEPTH deep (brackets inside strings count too).

    Cheap: a bracket count settles almost every file; otherwise innermost
    bracket pairs are peeled off one level per pass over a brackets-only copy.
    """
    opening = (b"[", b"{") if isinstance(data, bytes) else ("[", "{")
    if data.count(opening[0]) + data.count(opening[1]) <= _MAX_FAST_DEPTH:
        return True
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    brackets = _NOT_BRACKET.sub("", text)
    for _level in range(_MAX_FAST_DEPTH):
        peeled = brackets.replace("[]", "").replace("{}", "")
        if not peeled:
            return True
        if peeled == brackets:  # unbalanced (brackets in strings): let stdlib json decide
            return False
        brackets = peeled
    return False


def load_json(data: bytes | str):
    """Parse with orjson; fall back to json for what orjson rejects (BOM, NaN, huge numbers).

    Deeply nested documents go straight to json, which raises RecursionError
    (reported as parse_error) instead of crashing the process.
    Raises ValueError for invalid JSON.
    """
    if _shallow(data):
        try:
            return _fast_loads(data)
        except ValueError:
            if isinstance(data, bytes):
                raise
    return json.loads(data, parse_constant=_no_constants, parse_int=float)


_NUMBER_TYPES = frozenset((int, float))  # exact types: bool is not a number here
_CONTAINER_TYPES = frozenset((dict, list))


def walk_json(document, sink: FieldSink) -> int:
    """File every numeric leaf under its own key; return the top-level record count.

    Nested dicts are walked and each number is filed under its leaf key
    (``{"metrics": {"ttft_ms": 5}}`` -> ``ttft_ms``), so the same metric lines
    up across CSV columns and flat or nested JSON. Items of a list of numbers
    are filed under the list's key. Booleans are not numbers.
    """
    numbers = sink.numbers
    pending = [document]
    push = pending.append
    while pending:
        node = pending.pop()
        if type(node) is dict:
            for key, value in node.items():
                kind = type(value)
                if kind in _NUMBER_TYPES:
                    numbers[key].append(value)
                elif kind is dict:
                    push(value)
                elif kind is list:
                    scalars = [item for item in value if type(item) in _NUMBER_TYPES]
                    if scalars:
                        numbers[key] += scalars
                    if len(scalars) != len(value):
                        pending += [item for item in value if type(item) in _CONTAINER_TYPES]
        elif type(node) is list:
            pending += [item for item in node if type(item) in _CONTAINER_TYPES]
    return len(document) if type(document) is list else 1


# Patterns start with a literal "\n" (the text gets one prepended) so the regex
# engine jumps from line to line instead of trying every character.
_HEADING = re.compile(r"\n {0,3}#{1,6}[ \t]")
_TABLE = re.compile(  # header row, separator row (|---|:--:|), body rows
    r"\n[ \t]*\|[^\n]*\|[ \t]*\r?\n"
    r"[ \t]*\|(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*\r?(?=\n)"
    r"(?:\n[ \t]*\|[^\n]*\|[ \t]*\r?(?=\n|\Z))*"
)
# "key: 12.5", "- **key**: 12.5 ms", "key:** 12.5" -- identifier keys only, so
# prose like "Date: 2025-11-14" or "Average Throughput: ..." is left alone.
_KEY_VALUE = re.compile(
    r"\n[ \t]*(?:[-*+][ \t]+)?\**`?([A-Za-z_][A-Za-z0-9_.]*)`?\**[ \t]*:\**[ \t]*"
    r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)[ \t]*[A-Za-z/%]{0,8}[ \t]*\r?(?=\n|\Z)"
)


@dataclass
class MarkdownOutcome:
    headings: int
    tables: int


def _cells(line: str) -> list[str]:
    """Cells of a table row; "| **1** | `2` |" -> ["1", "2"]."""
    return [cell.strip().strip("*`").strip() for cell in line.strip().strip("|").split("|")]


def _raw_cells(line: str) -> list[str]:
    """Cells of a plain table row, blanks kept (JSON number parsing ignores them)."""
    return line.strip().strip("|").split("|")


def parse_markdown(text: str, sink: FieldSink) -> MarkdownOutcome:
    """Count headings and pipe tables; take numbers from table columns and key: value lines."""
    text = "\n" + text
    headings = len(_HEADING.findall(text))
    tables = 0
    if "|" in text:
        for match in _TABLE.finditer(text):
            tables += 1
            table = match.group(0)
            lines = table.strip("\n").split("\n")
            header = _cells(lines[0])
            plain = "*" not in table and "`" not in table
            rows = [row for row in map(_raw_cells if plain else _cells, lines[2:]) if len(row) == len(header)]
            if rows:
                commas = "," in table  # "1,234" must not be split by a comma join
                add_columns(sink, header, zip(*rows), cells_may_hold_commas=commas)
    if ":" in text:
        numbers = sink.numbers
        for key, number in _KEY_VALUE.findall(text):
            numbers[key].append(float(number))
    return MarkdownOutcome(headings, tables)
