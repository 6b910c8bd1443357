"""PNG plots beside the report (matplotlib, Agg, imported only here and only when plotting).

Figures are built with the object API (no pyplot: no global state, no GUI
backend, faster import). Every value plotted comes from the report context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tr111.report.formatting import level
from tr111.report.metrics import METRICS, STAGES

DPI = 100


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, path: Path, *, left: float = 0.1, right: float = 0.97, top: float = 0.9,
          bottom: float = 0.12, **spacing: float) -> str:
    # fixed margins instead of tight_layout, which draws every figure twice
    fig.subplots_adjust(left=left, right=right, top=top, bottom=bottom, **spacing)
    fig.savefig(path, format="png")
    fig.clear()  # a figure is a web of cycles: break it so the next plot reuses the memory (peak RSS)
    return path.name


def _label_margin(labels: list[str], width_in: float) -> float:
    """Left margin (figure fraction) for y tick labels of 8-pt text."""
    longest = max((len(label) for label in labels), default=8)
    return min(0.5, (0.25 + longest * 0.065) / width_in)


STAGE_COLORS = {"analysis": "#1f77b4", "report": "#2ca02c"}
PART_COLORS = (("load_ms", "load", "#ff7f0e"), ("prefill_ms", "prefill", "#1f77b4"),
               ("overhead_ms", "client overhead", "#9467bd"))


def _geo_err(summary) -> tuple[float, float]:
    """Error bar lengths of a geometric mean's interval (asymmetric, never below zero)."""
    if summary is None or summary.geo_mean is None or summary.ci95_low is None:
        return 0.0, 0.0
    return summary.geo_mean - summary.ci95_low, summary.ci95_high - summary.geo_mean


def rates(entries: list[dict], path: Path) -> str | None:
    """Decode (left) and prefill (right) rate per config, one bar per stage, 95% log-scale CI."""
    items = [e for e in entries if any(e["stages"][s]["decode"].geo_mean is not None for s in STAGES)]
    if not items:
        return None
    height = 1.0 + 0.45 * len(items)
    fig, axes = _figure(11, height, 1, 2)
    bar = 0.8 / len(STAGES)
    for ax, key, label in zip(axes[0], ("decode", "prefill"), ("decode rate, tok/s", "prefill rate, tok/s")):
        for k, stage in enumerate(STAGES):
            y = [len(items) - 1 - i - (k - (len(STAGES) - 1) / 2) * bar for i in range(len(items))]
            values = [e["stages"][stage][key].geo_mean for e in items]
            errs = [_geo_err(e["stages"][stage][key]) for e in items]
            ax.barh(y, [v if v is not None else float("nan") for v in values], height=bar, capsize=2,
                    color=STAGE_COLORS[stage], label=stage, xerr=[[a for a, _ in errs], [b for _, b in errs]])
        ax.set_xlabel(f"geometric mean {label} (bars: 95% CI)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    labels = [e["config_id"] + (" (baseline)" if e["is_baseline"] else "") for e in items]
    axes[0][0].set_yticks(list(range(len(items)))[::-1], labels, fontsize=8)
    axes[0][1].set_yticks(list(range(len(items)))[::-1], [""] * len(items))
    fig.suptitle("Decode and prefill rate per config and stage", fontsize=10)
    return _save(fig, path, left=_label_margin(labels, 11), top=1 - 0.4 / height, bottom=0.55 / height,
                 wspace=0.08)


def ttft(entries: list[dict], path: Path) -> str | None:
    """Mean warm TTFT per config, one panel per stage, stacked as load + prefill + client overhead."""
    items = [e for e in entries if any(e["stages"][s]["ttft"].n for s in STAGES)]
    if not items:
        return None
    height = 1.0 + 0.32 * len(items)
    fig, axes = _figure(11, height, 1, len(STAGES))
    y = list(range(len(items)))[::-1]
    for ax, stage in zip(axes[0], STAGES):
        left = [0.0] * len(items)
        for key, label, color in PART_COLORS:
            part = [max(e["stages"][stage][key] or 0.0, 0.0) for e in items]
            ax.barh(y, part, left=left, color=color, label=label)
            left = [a + b for a, b in zip(left, part)]
        means = [e["stages"][stage]["ttft"].mean for e in items]
        ax.plot([m if m is not None else float("nan") for m in means], y, "k|", markersize=10,
                label="mean warm TTFT")
        truncated = [e["config_id"] for e in items if e["stages"][stage]["truncated"]]
        ax.set_title(f"{stage} call" + (" (⚠ truncated: " + ", ".join(truncated) + ")" if truncated else ""),
                     fontsize=9)
        ax.set_xlabel("warm TTFT, ms (arithmetic means)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, [e["config_id"] for e in items], fontsize=8)
    for ax in axes[0][1:]:
        ax.set_yticks(y, [""] * len(items))
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.suptitle("Warm time to first token: load + prefill + client overhead", fontsize=10)
    return _save(fig, path, left=_label_margin([e["config_id"] for e in items], 11), right=0.87,
                 top=1 - 0.55 / height, bottom=0.55 / height, wspace=0.08)


def sensitivity(item: dict, path: Path) -> str | None:
    """Level geometric means of decode rate and warm TTFT (one panel each; prefill rate is in the
    tables), one line per stage, 95% CI."""
    shown = [m for m in METRICS if m.key != "prefill"]
    fig, axes = _figure(9, 3.4, 1, len(shown))
    drawn = False
    x = list(range(len(item["levels"])))
    for ax, metric in zip(axes[0], shown):
        rows = [r for r in item["rows"] if r["measure"].metric is metric]
        for r in rows:
            points = [(i, c) for i, c in enumerate(r["cells"]) if c is not None and c.geo_mean is not None]
            if not points:
                continue
            drawn = True
            errs = [_geo_err(c) for _, c in points]
            term = r["term"]
            label = r["measure"].stage + (f" (p={term['p_value']:.3g})" if term else "")
            ax.errorbar([i for i, _ in points], [c.geo_mean for _, c in points], capsize=4, marker="o",
                        yerr=[[a for a, _ in errs], [b for _, b in errs]], label=label,
                        color=STAGE_COLORS[r["measure"].stage])
        ax.set_xticks(x, [level(v) for v in item["levels"]])
        ax.set_xlabel(item["parameter"])
        ax.set_title(f"{metric.name}, {metric.unit}", fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not drawn:
        return None
    fig.suptitle(f"Sensitivity to {item['parameter']} (geometric means of run means; baseline excluded; "
                 "bars: 95% CI)", fontsize=10)
    return _save(fig, path, left=0.08, right=0.98, top=0.84, bottom=0.15, wspace=0.3)


def trend(trend_data: dict, path: Path) -> str | None:
    """Decode rate and warm TTFT per config over the sweeps: one colour per config, the analysis
    call solid and the report call dashed."""
    if not trend_data.get("available"):
        return None
    sweeps = trend_data["sweeps"]
    measures = trend_data["measures"]
    metrics = list(dict.fromkeys(m.metric for m in measures))
    fig, axes = _figure(11, 6, len(metrics), 1)
    colors: dict[str, Any] = {}
    for ax, metric in zip([row[0] for row in axes], metrics):
        for config_id, series in trend_data["series"].items():
            for m in (m for m in measures if m.metric is metric):
                points = series[m.key]
                if points["values"]:
                    line, = ax.plot(points["index"], points["values"], marker="o", markersize=3,
                                    linestyle="-" if m.stage == STAGES[0] else "--", color=colors.get(config_id),
                                    label=config_id if m.stage == STAGES[0] else None)
                    colors.setdefault(config_id, line.get_color())
        ax.set_ylabel(f"{metric.name}, {metric.unit}")
        ax.grid(alpha=0.3)
        ax.set_xticks(range(len(sweeps)), [_short(s["sweep_id"]) for s in sweeps], rotation=30,
                      fontsize=7, ha="right")
    if len(trend_data["series"]) <= 24:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=6, loc="center right", frameon=False)
    axes[0][0].set_title(f"Nightly trend per config (geometric means; {STAGES[0]} call solid, {STAGES[1]} "
                         "call dashed)", fontsize=9)
    return _save(fig, path, left=0.08, right=0.76, top=0.95, bottom=0.12, hspace=0.45)


def _short(sweep_id: str) -> str:
    return sweep_id if len(sweep_id) <= 24 else sweep_id[:11] + "…" + sweep_id[-11:]


PLOTS_VERSION = "3"  # bump when a plot's drawing code changes: cached PNGs are redrawn


def write_plots(ctx, folder: Path) -> dict[str, Any]:
    """Render every plot the data allows into ``folder``; returns name -> file (None if skipped).

    A plot whose inputs are unchanged since the last render of this folder is
    not redrawn (``.plots.json`` keeps a digest of each plot's inputs).
    """
    import hashlib
    import json

    index_path = folder / ".plots.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    fresh: dict[str, str] = {}

    def cached(filename: str, inputs: Any, draw) -> str | None:
        digest = hashlib.sha256(f"{PLOTS_VERSION}|{inputs!r}".encode()).hexdigest()
        target = folder / filename
        if index.get(filename) == digest and target.exists():
            fresh[filename] = digest
            return filename
        name = draw(target)
        if name:
            fresh[filename] = digest
        return name

    def series(*keys):
        return [(e["config_id"], e["is_baseline"], [[e["stages"][s][k] for k in keys] for s in STAGES])
                for e in ctx.entries]

    out: dict[str, Any] = {
        "rates": cached("rates_per_stage.png", series("decode", "prefill"), lambda t: rates(ctx.entries, t)),
        "ttft": cached("ttft_per_stage.png", series("ttft", "load_ms", "prefill_ms", "overhead_ms", "truncated"),
                       lambda t: ttft(ctx.entries, t)),
        "sensitivity": {},
        "trend": cached("trend.png", ([(s["sweep_id"], s.get("means")) for s in ctx.trend.get("sweeps", [])],
                                      ctx.trend.get("series")),
                        lambda t: trend(ctx.trend, t)),
    }
    for item in ctx.effects.get("sensitivity", []):
        name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in item["parameter"])
        out["sensitivity"][item["parameter"]] = cached(f"sensitivity_{name}.png", item,
                                                       lambda t, item=item: sensitivity(item, t))
    index_path.write_text(json.dumps(fresh, indent=1), encoding="utf-8")
    return out
