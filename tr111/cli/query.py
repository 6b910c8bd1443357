"""``tr111 query``: read-only SQL against the warehouse, bounded in time and rows.

Every statement of the SQL runs in order and each result is shown (a table per statement);
the whole command shares one timeout (``--timeout``, default 30 s: the query is interrupted,
exit code 1) and each result shows at most ``--max-rows`` rows (default 1000, rows are
streamed, never all held in memory) with a note when more were cut. Bad SQL is one line and
exit code 2; Ctrl-C is one line and exit code 130. Nothing heavy is imported at module level:
``tr111 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 1000
EXIT_OK, EXIT_INTERRUPTED = 0, 130


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be in (0, 86400] seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_query_command(sub) -> None:
    query = sub.add_parser(
        "query", help="run read-only SQL against the warehouse (bounded: --timeout, --max-rows)",
        description="Run read-only SQL against the warehouse. Several statements separated by ';'"
                    " run in order and every result is shown. Exit codes: 0 ok, 1 timed out,"
                    " 2 bad SQL or flags, 130 interrupted (Ctrl-C).")
    query.add_argument("sql", help="one or more SQL statements (separated by ';')")
    query.add_argument("--warehouse")
    query.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"interrupt the query after S seconds, all statements together "
                            f"(default {DEFAULT_TIMEOUT_S:g}; exit code 1)")
    query.add_argument("--max-rows", type=_positive_int, default=DEFAULT_MAX_ROWS, metavar="N",
                       help=f"show at most N rows of each result (default {DEFAULT_MAX_ROWS})")


def cmd_query(args) -> int:
    """Run the statements; ConfigError (bad SQL, exit 2) and TerminalError (timeout, exit 1)
    reach the CLI's one-line handler; Ctrl-C is answered here (exit 130).

    The statements run in a worker thread while this (the main) thread waits: a timeout or a
    Ctrl-C (delivered only to the main thread, which DuckDB does not check while it executes)
    interrupts the connection at once."""
    import duckdb

    from tr111.errors import ConfigError, TerminalError
    from tr111.settings import Settings
    from tr111.warehouse import open_read_only

    settings = Settings.build(warehouse_path=args.warehouse)
    try:
        statements = duckdb.extract_statements(args.sql)
    except duckdb.Error as exc:
        raise ConfigError(f"query failed: {_first_line(exc)}") from None
    if not statements:
        raise ConfigError("query failed: no SQL statement given")
    try:
        with open_read_only(settings.warehouse_path, timeout_s=args.timeout) as con:
            # Read-only covers the warehouse; this also refuses COPY ... TO, ATTACH, read_csv(...)
            # of other files and extension installs: the command reads the warehouse, nothing else.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            outcome: dict = {}
            done = threading.Event()

            def work() -> None:
                try:
                    outcome["results"] = [_run(con, s, args.max_rows) for s in statements]
                except BaseException as exc:  # handed to the main thread
                    outcome["error"] = exc
                finally:
                    done.set()

            threading.Thread(target=work, name="tr111-query", daemon=True).start()
            try:
                finished = done.wait(args.timeout)
            except KeyboardInterrupt:
                _stop(con, done)
                raise
            if not finished:
                _stop(con, done)
                raise TerminalError(f"query timed out after {args.timeout:g} s and was interrupted"
                                    " (--timeout S to allow longer)")
        error = outcome.get("error")
        if isinstance(error, (KeyboardInterrupt, duckdb.InterruptException)):
            raise KeyboardInterrupt
        if isinstance(error, duckdb.Error):
            raise ConfigError(f"query failed: {_first_line(error)}")
        if error is not None:
            raise error
        titled = len(statements) > 1
        for index, (statement, result) in enumerate(zip(statements, outcome["results"]), 1):
            if result is not None:
                _print(result, f"[{index}] {_one_line(statement.query)}" if titled else None,
                       args.max_rows)
    except KeyboardInterrupt:
        print("tr111: error: query interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _stop(con, done: threading.Event) -> None:
    """Interrupt the running statement and give the worker a moment to let go of the connection
    (interrupted again while it has not: an interrupt between two statements would be lost)."""
    for _ in range(50):
        con.interrupt()
        if done.wait(0.1):
            return


def _run(con, statement, max_rows: int):
    """(column names, rows, cut) of one statement (None: no result set), at most ``max_rows``
    rows fetched: the result streams, the rest is never materialised."""
    cur = con.execute(statement)
    if cur.description is None:
        return None
    names = [d[0] for d in cur.description]
    rows = cur.fetchmany(max_rows + 1)
    return names, rows[:max_rows], len(rows) > max_rows


def _print(result, title: str | None, max_rows: int) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    names, rows, cut = result
    table = Table(*(escape(n) for n in names), show_lines=False)
    for row in rows:
        table.add_row(*(escape("NULL" if v is None else str(v)) for v in row))
    width = max(120, os.get_terminal_size(0).columns if sys.stdout.isatty() else 200)
    console = Console(width=width)
    if title:
        console.print(title, markup=False, highlight=False)
    console.print(table)
    if cut:
        console.print(f"(first {max_rows} rows shown; more were cut: --max-rows N to see more)",
                      markup=False, highlight=False)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _one_line(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
