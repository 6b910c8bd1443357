"""The one place numbers become text: the report's filters, the artifacts and ``tr111 compare``.

Every output prints a p-value, an interval or a change the same way because
they all call these; a value that is missing or not finite prints "n/a", an
interval of fewer than summary.MIN_N_CI observations "n too small".
"""

from __future__ import annotations

import json
import re
import math
from typing import Any

NA = "n/a"
TOO_SMALL = "n too small"
TRUNCATED = "⚠ truncated"  # beside a config whose prompt the server cut (a footnote says what it means)
P_FLOOR = 0.0001  # below this a p-value prints as "< 0.0001"


def _finite(value: Any) -> bool:
    """A real number to print (bools are flags, not numbers)."""
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def number(value: Any, digits: int = 2) -> str:
    """Floats with thousands separators and ``digits`` decimals; other values as they are."""
    if value is None:
        return NA
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if math.isfinite(value) else NA
    return str(value)


def signed(value: Any, digits: int = 2) -> str:
    """A change with its sign always shown: "+1.23", "-0.50"."""
    if not _finite(value):
        return NA
    return ("+" if value >= 0 else "-") + number(abs(value), digits)


def signed_pct(value: Any, digits: int = 2) -> str:
    """A relative change: "+1.23%"."""
    text = signed(value, digits)
    return text if text == NA else text + "%"


def pvalue(value: Any) -> str:
    """4 decimals, or "< 0.0001"; a value outside [0, 1] or not a number is "n/a"."""
    if not _finite(value) or not 0 <= value <= 1 + 1e-9:  # 1e-9: rounding in 2 * sf(t)
        return NA
    return f"< {P_FLOOR:g}" if value < P_FLOOR else f"{value:.4f}"


def p_prose(value: Any) -> str:
    """For a sentence: "= 0.0123" or "< 0.0001", so it reads "p = 0.0123" / "p < 0.0001"."""
    text = pvalue(value)
    return text if text == NA or text.startswith("<") else "= " + text


def verdict(value: Any, alpha: float = 0.05) -> str:
    if not _finite(value):
        return "not tested"
    return "significant" if value < alpha else "not significant"


def interval(bounds: Any, digits: int = 2, n: Any = None) -> str:
    """A (low, high) pair as "[a, b]"; "n too small" when ``n`` is given and below MIN_N_CI,
    "n/a" when either end is missing."""
    from tr111.stats.summary import MIN_N_CI

    if isinstance(n, int) and not isinstance(n, bool) and n < MIN_N_CI:
        return TOO_SMALL
    low, high = bounds if bounds is not None else (None, None)
    if not (_finite(low) and _finite(high)):
        return NA
    return f"[{number(low, digits)}, {number(high, digits)}]"


def ci(summary: Any, digits: int = 2) -> str:
    """The 95% CI of a DistributionSummary (the geometric mean's, log_t_ci), or "n too small"."""
    return interval((getattr(summary, "ci95_low", None), getattr(summary, "ci95_high", None)), digits,
                    getattr(summary, "n", None))


def pct_interval(comparison: Any, digits: int = 1) -> str:
    """The CI of a log-scale comparison's change, in percent: "[-9.1%, -6.9%]"."""
    low, high = getattr(comparison, "ci95_low", None), getattr(comparison, "ci95_high", None)
    if not (_finite(low) and _finite(high)):
        return NA
    return f"[{signed_pct(low, digits)}, {signed_pct(high, digits)}]"


def geo(summary: Any, digits: int = 2) -> str:
    """A summary's geometric mean with its interval: "84.12 [83.01, 85.26]"."""
    value = getattr(summary, "geo_mean", None)
    if value is None:
        return NA
    return f"{number(value, digits)} {ci(summary, digits)}"


def level(value: Any) -> str:
    """A parameter level; None is the server's default."""
    if value is None:
        return "default"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def cell(value: Any) -> str:
    """Text for a markdown table cell: model output is data, so pipes and newlines are escaped."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def code(value: Any) -> str:
    """A string from outside (server, matrix, corpus) as one inline code span: the fence is
    longer than any backtick run inside it, and a newline cannot end the line."""
    text = "" if value is None else " ".join(str(value).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def text(value: Any) -> str:
    """A string from outside as prose: one line, HTML and markdown syntax shown, not obeyed."""
    out = cell(value)
    return re.sub(r"([`*\[\]#!])", r"\\\1", out)  # an intraword _ stays: Q4_K_M


def fenced(value: Any) -> str:
    """A value inside a fenced block: kept on its line, so it can never close the fence."""
    return "" if value is None else " ".join(str(value).splitlines())


def change_verdict(change: Any) -> str:
    """The verdict cell of one config and measure in a sweep comparison."""
    if change.regression:
        return "**REGRESSION**"
    if change.improvement:
        return "improvement"
    return "no change"


def regression_table(comparison: Any) -> str:
    """The regression check as a markdown table, one row per config and measure (the report's
    section 11 and the artifact); means are geometric means of run means."""
    lines = ["| Configuration | Measure | Before → now | Δ% | p | Verdict |", "|---|---|---|---|---|---|"]
    for row in comparison.rows:
        for change in row.changes:
            m = change.measure
            lines.append(f"| `{row.config_id}` | {m.label}, {m.unit} | {number(change.baseline_mean)} → "
                         f"{number(change.candidate_mean)} | {signed(change.change_pct)} | "
                         f"{pvalue(change.p_value)} | {change_verdict(change)} |")
    return "\n".join(lines)


FILTERS = {"fmt": number, "cell": cell, "pval": pvalue, "peq": p_prose, "verdict": verdict, "ci": ci,
           "interval": interval, "pct_interval": pct_interval, "geo": geo, "level": level, "signed": signed,
           "signed_pct": signed_pct, "regression_table": regression_table,
           "code": code, "text": text, "fenced": fenced,
           "from_json": lambda raw: json.loads(raw or "{}")}
