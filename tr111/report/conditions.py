"""The conditions a sweep was measured under, from recorded rows: host noise, the run order,
and swept options the server ignored.

A figure means one thing only if the reader knows what else was going on: calls timed while
other processes used the CPUs, configs run in an order that drift could confound, or a
"treatment" the server never applied (num_gpu on an engine that cannot offload) would
otherwise be read as effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from tr111.warehouse.reader import rows

# A swept option and what the server reports when it applied it (/api/ps, recorded on configs).
OBSERVABLE = {"num_gpu": ("size_vram", "bytes of the model in GPU memory (/api/ps size_vram)"),
              "num_ctx": ("context_length", "context length in effect (/api/ps context_length)")}


@dataclass(frozen=True)
class HostNoise:
    """Calls timed on a contended host, by run; ``visible`` False: the server's host is remote."""

    calls: int
    contended_calls: int
    unjudged_calls: int
    runs: tuple[str, ...]  # "<config>-run<N>" with at least one contended call
    max_other_cpu_share: float | None  # the worst call's other-process CPU, in cores
    visible: bool
    recorded: bool = True  # False: a sweep made before host load was kept

    @property
    def affected(self) -> bool:
        return bool(self.runs)


@dataclass(frozen=True)
class IgnoredOption:
    option: str
    levels: tuple
    observed: object
    meaning: str


@dataclass(frozen=True)
class Conditions:
    noise: HostNoise
    run_order: str | None
    order_seed: int | None
    restarts_planned: int | None
    ignored: tuple[IgnoredOption, ...] = field(default_factory=tuple)

    @property
    def ignored_names(self) -> set[str]:
        return {i.option for i in self.ignored}


def host_noise(con: duckdb.DuckDBPyConnection, sweep_id: str) -> HostNoise:
    """Over the calls statistics use: how many met other load, and in which runs."""
    found = rows(con, """
        SELECT config_id, run_number, host_contended, host_other_cpu_s, wall_ms, host_harness_cpu_s
        FROM stat_calls WHERE sweep_id = ? ORDER BY config_id, run_number""", [sweep_id])
    contended = [r for r in found if r["host_contended"]]
    shares = [r["host_other_cpu_s"] / (r["wall_ms"] / 1000.0) for r in found
              if r["host_other_cpu_s"] is not None and r["wall_ms"]]
    runs = tuple(dict.fromkeys(f"{r['config_id']}-run{r['run_number']}" for r in contended))
    # a remote server leaves other_cpu NULL while the harness's own time is still recorded
    recorded = any(r["host_harness_cpu_s"] is not None for r in found)
    visible = not recorded or any(r["host_other_cpu_s"] is not None for r in found)
    return HostNoise(len(found), len(contended), sum(1 for r in found if r["host_contended"] is None),
                     runs, max(shares) if shares else None, visible, recorded)


def ignored_options(configs: list[dict], swept: list[str]) -> tuple[IgnoredOption, ...]:
    """Swept options whose levels left what the server reports unchanged (two or more levels,
    every non-baseline config described, one observed value): not a treatment at all."""
    out = []
    for option in swept:
        if option not in OBSERVABLE:
            continue
        column, meaning = OBSERVABLE[option]
        measured = [c for c in configs if not c["is_baseline"]]
        levels = {c["levels"].get(option) for c in measured} - {None}
        observed = {c.get(column) for c in measured}
        if len(levels) >= 2 and len(observed) == 1 and None not in observed:
            out.append(IgnoredOption(option, tuple(sorted(levels)), observed.pop(), meaning))
    return tuple(out)


def conditions(con: duckdb.DuckDBPyConnection, sweep: dict, configs: list[dict], swept: list[str]) -> Conditions:
    return Conditions(host_noise(con, sweep["sweep_id"]), sweep.get("run_order"), sweep.get("order_seed"),
                      sweep.get("restarts_planned"), ignored_options(configs, swept))
