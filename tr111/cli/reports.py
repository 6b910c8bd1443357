"""``tr111 report``, ``tr111 compare`` and ``tr111 export``: read the warehouse, never Prefect.

Wired into tr111.cli by two calls: ``add_report_commands(sub)`` in build_parser
(adds compare and export; ``report`` exists there already) and
``run_report_command(args)`` first thing in main (returns None for commands
that are not these).

Exit status of compare: 0 no regression, 3 at least one config regressed
(EXIT_REGRESSION), 2 bad input (unknown sweep...), 1 other failures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tr111.report.summary import SweepComparison

EXIT_OK, EXIT_USAGE, EXIT_REGRESSION = 0, 2, 3
COMMANDS = ("report", "compare", "export")


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "compare", help="compare two sweeps per config (Welch); exit 3 when a config regressed",
        description="Per config present in both sweeps and per stage (analysis, report): change of the "
                    "decode rate and of warm TTFT (geometric means of run means; Welch's t-test of their "
                    "logs). A config regressed when a change is significant (p < 0.05) and worse than the "
                    "threshold. Exit status: 0 none, 3 regression(s).")
    compare.add_argument("--baseline", required=True,
                         help="the reference sweep id, or 'previous': the completed sweep of the same "
                              "matrix and model before the candidate")
    compare.add_argument("--candidate", default="latest", help="the sweep to judge (default: latest)")
    compare.add_argument("--threshold", type=float,
                         help="regression threshold in %% (default: TR111_REGRESSION_THRESHOLD_PCT or 5)")
    compare.add_argument("--warehouse")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")

    export = sub.add_parser("export", help="export a sweep's calls, runs, quality scores and summaries "
                                           "(config_summary, stage_summary and the report's summary.json)")
    export.add_argument("--sweep", default="latest", help="sweep id or 'latest'")
    export.add_argument("--format", choices=["csv", "json", "parquet"], default="csv")
    export.add_argument("--out", help="folder (default: <report folder>/<sweep>/export)")
    export.add_argument("--warehouse")


def run_report_command(args: argparse.Namespace) -> int | None:
    """Run ``report``/``compare``/``export``; None for any other command."""
    command = getattr(args, "command", None)
    if command not in COMMANDS:
        return None
    from tr111.errors import ConfigError
    from tr111.settings import Settings

    settings = Settings.build(warehouse_path=getattr(args, "warehouse", None),
                              out_dir=getattr(args, "out", None) if command == "report" else None)
    try:
        if command == "report":
            return _report(args, settings)
        if command == "compare":
            return _compare(args, settings)
        return _export(args, settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _report(args, settings) -> int:
    from tr111.report.service import generate

    outcome = generate(settings.warehouse_path, args.sweep, settings.out_dir, settings.templates_dir,
                       threshold_pct=settings.regression_threshold_pct)
    print(outcome.path)
    return EXIT_OK


def _compare(args, settings) -> int:
    from tr111.errors import ConfigError
    from tr111.report import history, queries
    from tr111.warehouse import open_read_only
    from tr111.warehouse.reader import resolve_sweep_id, sweep_row

    threshold = args.threshold if args.threshold is not None else settings.regression_threshold_pct
    if not threshold > 0:
        raise ConfigError("--threshold must be a positive percentage")
    with open_read_only(settings.warehouse_path) as con:
        candidate = resolve_sweep_id(con, args.candidate)
        if args.baseline == "previous":
            baseline = queries.previous_sweep(con, sweep_row(con, candidate))
            if baseline is None:
                raise ConfigError(f"no completed sweep of the same matrix and model before {candidate!r}")
        else:
            baseline = resolve_sweep_id(con, args.baseline)
        result = history.compare_sweeps(con, baseline, candidate, threshold_pct=threshold)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(format_comparison(result))
    return EXIT_REGRESSION if result.flagged else EXIT_OK


def format_comparison(result: SweepComparison) -> str:
    """The comparison as a plain-text table (one line per config and measure) and a verdict line."""
    from tr111.report.formatting import number, pvalue, signed_pct

    head = f"{'config':<28} {'measure':<30} {'before -> now':>26} {'change':>9} {'p':>8}  verdict"
    lines = [f"baseline {result.baseline}  ->  candidate {result.candidate}  "
             f"(per stage, geometric means of run means; regression: p < {result.alpha:g} and worse than "
             f"{number(result.threshold_pct, 1)}%)", head, "-" * len(head)]
    for r in result.rows:
        for c in r.changes:
            verdict = "REGRESSION" if c.regression else "improvement" if c.improvement else "ok"
            means = number(c.baseline_mean) + " -> " + number(c.candidate_mean)
            measure = f"{c.measure.name}, {c.measure.unit}"
            lines.append(f"{r.config_id:<28} {measure:<30} {means:>26} {signed_pct(c.change_pct):>9} "
                         f"{pvalue(c.p_value):>8}  {verdict}")
    for label, names in (("only in baseline", result.only_baseline), ("only in candidate", result.only_candidate)):
        if names:
            lines.append(f"{label}: {', '.join(names)}")
    flagged = result.flagged
    lines.append(f"regressions: {len(flagged)}" + (f" ({', '.join(flagged)})" if flagged else ""))
    return "\n".join(lines)


def _export(args, settings) -> int:
    from tr111.matrix import validate_id
    from tr111.report.exports import export_sweep
    from tr111.warehouse import open_read_only
    from tr111.warehouse.reader import resolve_sweep_id

    with open_read_only(settings.warehouse_path) as con:
        sweep_id = validate_id(resolve_sweep_id(con, args.sweep), "sweep id")
        folder = Path(args.out) if args.out else Path(settings.out_dir) / sweep_id / "export"
        files = export_sweep(con, sweep_id, args.format, folder,
                             threshold_pct=settings.regression_threshold_pct)
    for path in files:
        print(path)
    return EXIT_OK

