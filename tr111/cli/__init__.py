"""The ``tr111`` command. Imports stay lazy: ``tr111 --help`` must not load Prefect."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit code 2; subcommands inherit it."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tr111", description=(
        "Benchmark a local LLM server speaking the Ollama API (or tr111's embedded engine): "
        "Prefect sweeps into a DuckDB warehouse, and the technical report."))
    parser.add_argument("--verbose", action="store_true", help="show Prefect's logs")
    sub = parser.add_subparsers(dest="command", required=True)

    sweep = sub.add_parser("sweep", help="run a sweep (tr111-sweep), then render its report")
    sweep.add_argument("--matrix", default="quick",
                       help="sweep matrix YAML, or a built-in one: quick (default), tr111")
    sweep.add_argument("--ollama-url", help="server URL (default: OLLAMA_HOST or 127.0.0.1:11434)")
    sweep.add_argument("--engine", choices=["auto", "ollama", "embedded"],
                       help="auto: Ollama if it answers, else the embedded engine")
    sweep.add_argument("--model", help="override the matrix's model")
    sweep.add_argument("--corpus", help="benchmark files to ingest (default: the shipped sample corpus)")
    sweep.add_argument("--warehouse", help="DuckDB file (default: warehouse/tr111.duckdb in a checkout, else $TR111_HOME/tr111.duckdb)")
    sweep.add_argument("--out", help="report folder (default: reports in a checkout, else $TR111_HOME/reports)")
    sweep.add_argument("--runs", type=int, help="override runs per config")
    sweep.add_argument("--restart", choices=["none", "unload", "command", "embedded"],
                       help="how to restart the server before a config's runs")
    sweep.add_argument("--sweep-id", help="resume (or name) a sweep")
    sweep.add_argument("--no-report", action="store_true", help="skip tr111-report")
    sweep.add_argument("--quiet-host", action="store_true",
                       help="before each run, wait (TR111_QUIET_HOST_TIMEOUT_S, default 120 s) until "
                            "other processes leave the CPUs alone")

    report = sub.add_parser("report", help="render the technical report of a sweep")
    report.add_argument("--sweep", default="latest", help="sweep id or 'latest'")
    report.add_argument("--warehouse")
    report.add_argument("--out")

    from tr111.cli.query import add_query_command

    add_query_command(sub)  # bounded: --timeout, --max-rows
    from tr111.cli.sweeps import add_sweeps_command

    add_sweeps_command(sub)  # status (interrupted when the owner is gone), owner, progress
    from tr111.cli.fleet import add_fleet_command

    add_fleet_command(sub)  # setup, worker, sweep over several GPU hosts

    engine = sub.add_parser("engine", help="the embedded Ollama-API engine")
    engine.add_argument("action", choices=["serve"])
    engine.add_argument("args", nargs=argparse.REMAINDER,
                        help="options of 'serve' (--host, --port, --model NAME=PATH, --threads)")
    from tr111.cli.reports import add_report_commands

    add_report_commands(sub)  # compare, export
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tr111.errors import ConfigError, TerminalError, Tr111Error

    try:
        from tr111.cli.reports import run_report_command

        handled = run_report_command(args)  # report, compare, export
        if handled is not None:
            return handled
        if args.command == "engine":
            from tr111.engine.cli import main as engine_main

            return engine_main([args.action, *args.args])
        if args.command == "query":
            from tr111.cli.query import cmd_query

            return cmd_query(args)
        if args.command == "fleet":
            from tr111.cli.fleet import cmd_fleet

            return cmd_fleet(args)
        if args.command == "sweeps":
            from tr111.cli.sweeps import cmd_sweeps

            return cmd_sweeps(args)
        return cmd_sweep(args)
    except ConfigError as exc:
        print(f"tr111: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TerminalError as exc:
        print(f"tr111: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Tr111Error as exc:
        print(f"tr111: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:  # Ctrl-C, or tr111.errors.Interrupted from SIGTERM
        signum = getattr(exc, "signum", 2)
        name = "SIGTERM" if signum == 15 else "SIGINT"
        sweep_id = getattr(args, "sweep_id", None)
        hint = f"; rerun with --sweep-id {sweep_id} to resume" if args.command == "sweep" and sweep_id else ""
        print(f"tr111: interrupted by {name}{hint}", file=sys.stderr)
        return 128 + signum


def cmd_sweep(args) -> int:
    if not args.verbose:  # logs still reach the Prefect API/UI; the terminal shows progress
        for handler in ("CONSOLE",):
            os.environ[f"PREFECT_LOGGING_HANDLERS_{handler}_LEVEL"] = "CRITICAL"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from tr111.cli.progress import progress_display
    from tr111.matrix import load_matrix, validate_id

    from tr111.run.plan import new_sweep_id

    load_matrix(args.matrix, model=args.model, runs=args.runs)  # bad input: fail before Prefect
    if args.sweep_id:
        validate_id(args.sweep_id, "sweep id")
    else:
        args.sweep_id = new_sweep_id()  # named now, so an interrupted sweep can say how to resume
    _preflight(args)
    from tr111.flows.prefect_server import own_prefect_server
    from tr111.flows.sweep import tr111_sweep
    from tr111.run.interrupts import latched_signals

    with latched_signals(), own_prefect_server(), progress_display():
        result = tr111_sweep(matrix=args.matrix, sweep_id=args.sweep_id, ollama_url=args.ollama_url,
                             engine=args.engine, model=args.model, runs=args.runs,
                             restart=args.restart, corpus=args.corpus, warehouse=args.warehouse,
                             out=args.out, report=not args.no_report,
                             quiet_host=args.quiet_host or None)
    print(f"sweep id: {result['sweep_id']}")
    print(f"status: {result['status']}")
    if result.get("failed_runs"):
        print(f"failed runs: {', '.join(result['failed_runs'])}")
    if result.get("report"):
        print(f"report: {result['report']}")
    return EXIT_OK if result["status"] == "completed" else EXIT_FAILED


def _preflight(args) -> None:
    """Settings, restart command and corpus checked before Prefect starts or a row is written:
    bad input is one line and exit code 2, not a failed flow run."""
    from tr111.errors import ConfigError, EmptyCorpusError
    from tr111.ingest.corpus import check_corpus
    from tr111.settings import Settings

    settings = Settings.build(ollama_url=args.ollama_url, engine=args.engine, corpus_dir=args.corpus,
                              warehouse_path=args.warehouse, out_dir=args.out,
                              restart_strategy=args.restart)
    if settings.restart_strategy == "command" and not settings.restart_command:
        raise ConfigError("--restart command needs TR111_RESTART_COMMAND, a JSON list of argv strings")
    try:
        check_corpus(settings.corpus_dir)
    except EmptyCorpusError as exc:
        raise ConfigError(str(exc)) from None
    from tr111.run.lease import refuse_if_held
    from tr111.run.sweep import check_output_paths

    check_output_paths(settings, report=not args.no_report)  # before Prefect starts, not after the sweep
    refuse_if_held(settings.warehouse_path, args.sweep_id)  # a second process: one line, now

