"""PNG plots beside the report (matplotlib, Agg, imported only here and only when plotting).

Figures are built with the object API (no pyplot: no global state, no GUI
backend, faster import). Every value plotted comes from the report context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tr111.report.formatting import level

DPI = 100
BASE_COLOR, OTHER_COLOR, COLD_COLOR = "#d62728", "#1f77b4", "#ff7f0e"


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _err(summary) -> tuple[float, float]:
    if summary is None or summary.mean is None or summary.ci95_low is None:
        return 0.0, 0.0
    return summary.mean - summary.ci95_low, summary.ci95_high - summary.mean


def _save(fig, path: Path, *, left: float = 0.1, right: float = 0.97, top: float = 0.9,
          bottom: float = 0.12, **spacing: float) -> str:
    # fixed margins instead of tight_layout, which draws every figure twice
    fig.subplots_adjust(left=left, right=right, top=top, bottom=bottom, **spacing)
    fig.savefig(path, format="png")
    return path.name


def _label_margin(labels: list[str], width_in: float) -> float:
    """Left margin (figure fraction) for y tick labels of 8-pt text."""
    longest = max((len(label) for label in labels), default=8)
    return min(0.5, (0.25 + longest * 0.065) / width_in)


def throughput(entries: list[dict], path: Path) -> str | None:
    items = [e for e in entries if e["tps"].mean is not None]
    if not items:
        return None
    fig, axes = _figure(8, 0.9 + 0.32 * len(items))
    ax = axes[0][0]
    y = list(range(len(items)))[::-1]
    errs = [_err(e["tps"]) for e in items]
    ax.barh(y, [e["tps"].mean for e in items], xerr=[[a for a, _ in errs], [b for _, b in errs]],
            color=[BASE_COLOR if e["is_baseline"] else OTHER_COLOR for e in items], capsize=3)
    ax.set_yticks(y, [e["config_id"] for e in items], fontsize=8)
    ax.set_xlabel("mean throughput, tok/s (bars: 95% CI, t)")
    low = min(e["tps"].ci95_low if e["tps"].ci95_low is not None else e["tps"].mean for e in items)
    high = max(e["tps"].ci95_high if e["tps"].ci95_high is not None else e["tps"].mean for e in items)
    pad = (high - low) * 0.15 or abs(high) * 0.05 or 1.0
    ax.set_xlim(max(0.0, low - pad), high + pad)
    ax.set_title("Throughput per config (baseline in red)")
    ax.grid(axis="x", alpha=0.3)
    height = 0.9 + 0.32 * len(items)
    return _save(fig, path, left=_label_margin([e["config_id"] for e in items], 8), top=1 - 0.35 / height,
                 bottom=0.55 / height)


def ttft(entries: list[dict], path: Path) -> str | None:
    items = [e for e in entries if e["ttft_warm"].mean is not None or e["ttft_cold"].mean is not None]
    if not items:
        return None
    fig, axes = _figure(8, 1.0 + 0.45 * len(items))
    ax = axes[0][0]
    height = 0.38
    for offset, key, color, label in ((height / 2, "ttft_warm", OTHER_COLOR, "warm"),
                                      (-height / 2, "ttft_cold", COLD_COLOR, "cold")):
        y = [len(items) - 1 - i + offset for i in range(len(items))]
        values = [e[key].mean if e[key].mean is not None else float("nan") for e in items]
        errs = [_err(e[key]) for e in items]
        ax.barh(y, values, height=height, color=color, label=label, capsize=2,
                xerr=[[a for a, _ in errs], [b for _, b in errs]])
    ax.set_yticks(list(range(len(items)))[::-1], [e["config_id"] for e in items], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("mean TTFT, ms (log scale; bars: 95% CI, t)")
    ax.set_title("Time to first token per config: warm vs cold calls")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    height = 1.0 + 0.45 * len(items)
    return _save(fig, path, left=_label_margin([e["config_id"] for e in items], 8), top=1 - 0.35 / height,
                 bottom=0.55 / height)


def sensitivity(item: dict, path: Path) -> str | None:
    fig, axes = _figure(9, 3.4, 1, 2)
    drawn = False
    for ax, (key, label) in zip(axes[0], (("tps", "throughput, tok/s"), ("warm", "warm TTFT, ms"))):
        rows = [r for r in item["levels"] if r[key] is not None and r[key].mean is not None]
        if not rows:
            ax.set_visible(False)
            continue
        drawn = True
        x = list(range(len(rows)))
        errs = [_err(r[key]) for r in rows]
        ax.errorbar(x, [r[key].mean for r in rows], yerr=[[a for a, _ in errs], [b for _, b in errs]],
                    marker="o", capsize=4, color=OTHER_COLOR)
        ax.set_xticks(x, [level(r["level"]) for r in rows])
        ax.set_xlabel(item["parameter"])
        ax.set_ylabel(f"mean of run means, {label}")
        term = item["effects"][key]["term"]
        ax.set_title(f"{label.split(',')[0]}: " + (f"F={term['f_value']:.2f}, p={term['p_value']:.3g}"
                                                  if term else "no ANOVA term"), fontsize=9)
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    fig.suptitle(f"Sensitivity to {item['parameter']} (baseline excluded; bars: 95% CI)", fontsize=10)
    return _save(fig, path, left=0.09, right=0.98, top=0.84, bottom=0.15, wspace=0.3)


def trend(trend_data: dict, path: Path) -> str | None:
    if not trend_data.get("available"):
        return None
    sweeps = trend_data["sweeps"]
    fig, axes = _figure(11, 6, 2, 1)
    for ax, (key, label) in zip((axes[0][0], axes[1][0]), (("tps", "mean throughput, tok/s"),
                                                           ("warm", "mean warm TTFT, ms"))):
        for config_id, series in trend_data["series"].items():
            points = [(i, v) for i, v in zip(series["index"], series[key]) if v is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=config_id)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_xticks(range(len(sweeps)), [_short(s["sweep_id"]) for s in sweeps], rotation=30,
                      fontsize=7, ha="right")
    if len(trend_data["series"]) <= 24:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=6, loc="center right", frameon=False)
    axes[0][0].set_title("Nightly trend per config (sweeps of the same matrix and model)")
    return _save(fig, path, left=0.08, right=0.76, top=0.95, bottom=0.12, hspace=0.45)


def _short(sweep_id: str) -> str:
    return sweep_id if len(sweep_id) <= 24 else sweep_id[:11] + "…" + sweep_id[-11:]


PLOTS_VERSION = "2"  # bump when a plot's drawing code changes: cached PNGs are redrawn


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

    def series(key):
        return [(e["config_id"], e["is_baseline"], e[key]) for e in ctx.entries]

    out: dict[str, Any] = {
        "throughput": cached("throughput.png", series("tps"), lambda t: throughput(ctx.entries, t)),
        "ttft": cached("ttft_cold_warm.png", (series("ttft_warm"), series("ttft_cold")),
                       lambda t: ttft(ctx.entries, t)),
        "sensitivity": {},
        "trend": cached("trend.png", (ctx.trend.get("sweeps"), ctx.trend.get("series")),
                        lambda t: trend(ctx.trend, t)),
    }
    for item in ctx.effects.get("sensitivity", []):
        name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in item["parameter"])
        out["sensitivity"][item["parameter"]] = cached(f"sensitivity_{name}.png", item,
                                                       lambda t, item=item: sensitivity(item, t))
    index_path.write_text(json.dumps(fresh, indent=1), encoding="utf-8")
    return out
