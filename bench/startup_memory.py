"""Start-up time of ``tr111 --help`` and peak memory of ``tr111 report``.

Every command runs as a child process, ``--repeats`` times (median reported), timed
with perf_counter around spawn-to-exit; CPU time and peak RSS come from ``os.wait4``
(that child alone, its own children excluded).

``tr111 --help`` three ways, because the launcher matters:

* ``tr111`` as found on PATH: under pyenv that is a bash shim that runs ``pyenv exec``
  (hundreds of ms of bash before Python starts);
* the console script itself, ``<sys.prefix>/bin/tr111`` (what a venv or pipx puts on PATH);
* ``python -m tr111.cli --help``;

plus the floor: ``python -c pass`` and ``python -c "import tr111.cli"``. The script also
checks that ``--help`` does not import Prefect (``-X importtime``) and lists the slowest
imports. Target: <= 0.3 s for the console script.

``tr111 report`` runs on a synthetic warehouse built like bench/warehouse_scale.py's (default:
a month of nightly sweeps of the study's matrix, 3 runs per config: 5,130 calls); target
peak RSS <= 150 MB. The peak RSS of importing each heavy dependency alone is listed
to show where the floor comes from.

    python -m bench.startup_memory [--repeats 10] [--report-repeats 3] [--calls 5130]
        [--warehouse FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import GNU_TIME, REPO_ROOT, machine_line, median, reproduce_line, run_child

TARGET_HELP_S = 0.3
TARGET_RSS_MB = 150.0
HEAVY_IMPORTS = ("duckdb", "numpy", "pandas", "pyarrow", "scipy.special", "scipy.stats", "statsmodels.api",
                 "matplotlib.figure", "jinja2", "httpx", "pydantic", "prefect")


def repeat(argv: list[str], n: int) -> dict:
    run_child(argv)  # warm the page cache and .pyc files
    rows = [run_child(argv) for _ in range(n)]
    return {key: median([r[key] for r in rows]) for key in rows[0]} | {"walls": [r["wall_s"] for r in rows]}


def import_profile(argv_tail: list[str]) -> tuple[bool, list[tuple[float, str]]]:
    """(prefect imported?, the slowest top-level imports in ms) for ``python -X importtime ...``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv_tail], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        rows.append((int(cumulative) / 1000, name))
    prefect = any(name == "prefect" or name.startswith("prefect.") for _, name in rows)
    top = sorted(((ms, n) for ms, n in rows if not n.startswith(" ")), reverse=True)[:6]
    return prefect, top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs of each --help variant")
    parser.add_argument("--report-repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5130, help="size of the generated warehouse")
    parser.add_argument("--warehouse", type=Path, help="report on this warehouse instead of a generated one")
    args = parser.parse_args(argv)

    console_script = str(Path(sys.prefix) / "bin" / "tr111")
    launchers = []  # every tr111 on PATH that is not the console script itself (e.g. a pyenv shim)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("tr111", path=folder) if folder else None
        if found and os.path.realpath(found) != os.path.realpath(console_script) and found not in launchers:
            launchers.append(found)
    variants = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "python -c 'import tr111.cli'": [sys.executable, "-c", "import tr111.cli"],
        "python -m tr111.cli --help": [sys.executable, "-m", "tr111.cli", "--help"],
    }
    if os.path.exists(console_script):
        variants[f"{console_script} --help"] = [console_script, "--help"]
    for launcher in launchers:
        variants[f"{launcher} --help (on PATH)"] = [launcher, "--help"]
    helps = {name: repeat(cmd, args.repeats) for name, cmd in variants.items()}
    prefect_in_help, slow_imports = import_profile(["-m", "tr111.cli", "--help"])

    with tempfile.TemporaryDirectory(prefix="tr111-startup-") as scratch:
        warehouse = args.warehouse
        if warehouse is None:
            from bench.warehouse_scale import build_warehouse

            warehouse = Path(scratch) / "month.duckdb"
            build_warehouse(warehouse, calls=args.calls, runs_per_config=3, sweeps_per_night=1)
        reports = []
        for i in range(args.report_repeats):
            reports.append(run_child([sys.executable, "-m", "tr111.cli", "report", "--sweep", "latest",
                                      "--warehouse", str(warehouse), "--out", str(Path(scratch) / f"out{i}")]))
        report = {key: median([r[key] for r in reports]) for key in reports[0]}
        imports = {name: run_child([sys.executable, "-c", f"import {name}"]) for name in HEAVY_IMPORTS}

    print(machine_line())
    print(f"{'command':70s} {'wall s':>7s} {'cpu s':>6s} {'RSS MB':>7s}   (median of {args.repeats}; "
          f"RSS by {'GNU time' if GNU_TIME else 'wait4'})")
    for name, r in helps.items():
        print(f"{name:70s} {r['wall_s']:7.3f} {r['cpu_s']:6.3f} {r['rss_mb']:7.1f}")
    print(f"--help imports Prefect: {'YES' if prefect_in_help else 'no'}; slowest imports: "
          + ", ".join(f"{n} {ms:.0f} ms" for ms, n in slow_imports))
    print(f"tr111 report --sweep latest ({warehouse.name if args.warehouse else f'{args.calls:,} calls'}): "
          f"wall {report['wall_s']:.2f} s, CPU {report['cpu_s']:.2f} s, peak RSS {report['rss_mb']:.0f} MB "
          f"(median of {args.report_repeats}; target <= {TARGET_RSS_MB:g} MB)")
    print("peak RSS of importing alone (MB): "
          + ", ".join(f"{name} {r['rss_mb']:.0f}" for name, r in imports.items()))
    print(reproduce_line("bench.startup_memory", argv if argv is not None else sys.argv[1:]))
    script = helps.get(f"{console_script} --help") or helps["python -m tr111.cli --help"]
    return 0 if script["wall_s"] <= TARGET_HELP_S and report["rss_mb"] <= TARGET_RSS_MB else 1


if __name__ == "__main__":
    sys.exit(main())
