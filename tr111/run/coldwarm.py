"""Cold/warm classification of calls, so TTFT is never averaged across model loads.

TR111 reported a TTFT CV of ~130% because every config's first call paid a
model load of several seconds. Here each call gets an explicit decision with a
reason string that the report can show next to excluded values.

Rule (in this order, per call in execution order):

1. ``first_after_restart`` -> cold, always. A fresh server process has to load
   the model; if the reported load_duration is small anyway the call is still
   counted cold (conservatively: dropping one warm sample costs little, mixing
   one cold sample into warm statistics ruins the CV). The reason says so.
2. ``load_duration_ms >= threshold_ms`` -> cold (a reload happened: options
   change, keep_alive expiry, eviction).
3. ``options_changed`` and load_duration unknown -> cold by position (a reload
   option changed and nothing says it did not reload).
4. load_duration unknown and ``ttft_ms >= ttft_factor x median TTFT`` of
   the non-positional calls -> cold (fallback evidence only).
5. otherwise warm. Ollama reports a few ms of load_duration on warm calls;
   the threshold sits well above that.

Threshold: ``max(min_threshold_ms, factor x median load_duration)`` where the
median is over calls that are neither first-after-restart nor options-changed
(the calls expected to be warm). Defaults: 50 ms and 5x. A real load of a
multi-GB model takes hundreds of ms to seconds, a warm call reports ~0.1-10 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from tr111.stats.summary import clean_values

MIN_THRESHOLD_MS = 50.0
LOAD_FACTOR = 5.0
TTFT_FACTOR = 3.0


@dataclass(frozen=True)
class CallTiming:
    """The minimal per-call input the classifier needs (in execution order)."""

    load_duration_ms: float | None
    ttft_ms: float | None = None  # or prompt_eval_duration_ms; only used as fallback
    first_after_restart: bool = False
    options_changed: bool = False  # a reload-triggering option changed (num_ctx/num_gpu/num_thread/num_batch)


@dataclass(frozen=True)
class ColdDecision:
    """Verdict for one call; ``rule`` is one of position/load_duration/ttft/warm."""

    index: int
    is_cold: bool
    reason: str
    rule: str
    load_duration_ms: float | None
    threshold_ms: float


def _get(call: Any, name: str, default: Any = None) -> Any:
    """Read a field from a dataclass/object or a mapping (rows from DuckDB are dicts)."""
    if isinstance(call, Mapping):
        return call.get(name, default)
    return getattr(call, name, default)


def _number(value: Any) -> float | None:
    kept = clean_values([value])
    return kept[0] if kept else None


def _ttft(call: Any) -> float | None:
    value = _number(_get(call, "ttft_ms"))
    return value if value is not None else _number(_get(call, "prompt_eval_duration_ms"))


def cold_threshold_ms(
    calls: Sequence[Any],
    *,
    min_threshold_ms: float = MIN_THRESHOLD_MS,
    factor: float = LOAD_FACTOR,
) -> float:
    """max(min_threshold_ms, factor x median load_duration of expected-warm calls)."""
    expected_warm = [
        _number(_get(c, "load_duration_ms")) for c in calls
        if not _get(c, "first_after_restart", False) and not _get(c, "options_changed", False)
    ]
    loads = [v for v in expected_warm if v is not None]
    if not loads:
        return float(min_threshold_ms)
    return float(max(min_threshold_ms, factor * float(np.median(loads))))


def classify_cold(
    calls: Sequence[Any],
    *,
    min_threshold_ms: float = MIN_THRESHOLD_MS,
    factor: float = LOAD_FACTOR,
    ttft_factor: float = TTFT_FACTOR,
) -> list[ColdDecision]:
    """Classify each call as cold (paid a model load) or warm; see the module docstring.

    ``calls`` may be CallTiming objects, any object with those attributes, or
    mappings with those keys; ``prompt_eval_duration_ms`` is accepted in place of
    ``ttft_ms``.
    """
    threshold = cold_threshold_ms(calls, min_threshold_ms=min_threshold_ms, factor=factor)
    reference_ttfts = [
        _ttft(c) for c in calls
        if not _get(c, "first_after_restart", False) and not _get(c, "options_changed", False)
    ]
    known_ttfts = [v for v in reference_ttfts if v is not None]
    ttft_limit = ttft_factor * float(np.median(known_ttfts)) if known_ttfts else None

    decisions: list[ColdDecision] = []
    for index, call in enumerate(calls):
        load = _number(_get(call, "load_duration_ms"))
        first = bool(_get(call, "first_after_restart", False))
        changed = bool(_get(call, "options_changed", False))
        ttft = _ttft(call)
        is_cold, rule, reason = _decide(load, first, changed, ttft, threshold, ttft_limit)
        decisions.append(ColdDecision(index, is_cold, reason, rule, load, threshold))
    return decisions


def _decide(
    load: float | None,
    first: bool,
    changed: bool,
    ttft: float | None,
    threshold: float,
    ttft_limit: float | None,
) -> tuple[bool, str, str]:
    if first:
        if load is None:
            return True, "position", "first call after restart"
        if load >= threshold:
            return True, "position", f"first call after restart (load_duration {load:.0f} ms)"
        return True, "position", (f"first call after restart (load_duration {load:.1f} ms "
                                  f"< threshold {threshold:.0f} ms, counted cold by position)")
    if load is not None and load >= threshold:
        cause = "options change reload, " if changed else ""
        return True, "load_duration", f"{cause}load_duration {load:.0f} ms >= threshold {threshold:.0f} ms"
    if load is None and changed:
        return True, "position", "options changed (reload expected, no load_duration)"
    if load is None and ttft is not None and ttft_limit is not None and ttft >= ttft_limit:
        return True, "ttft", (f"no load_duration; TTFT {ttft:.0f} ms >= {ttft_limit:.0f} ms "
                              "(outlier vs warm median)")
    if load is None:
        return False, "warm", "warm: no load_duration and TTFT not an outlier"
    suffix = " (options changed, no reload)" if changed else ""
    return False, "warm", f"warm: load_duration {load:.1f} ms{suffix}"


def cold_flags(calls: Sequence[Any], **kwargs: Any) -> list[bool]:
    """Just the booleans, in call order (for an ``is_cold`` column)."""
    return [d.is_cold for d in classify_cold(calls, **kwargs)]


def split_warm_cold(values: Sequence[Any], decisions: Sequence[ColdDecision]) -> tuple[list[Any], list[Any]]:
    """Partition per-call values (same order as the decisions) into (warm, cold)."""
    if len(values) != len(decisions):
        raise ValueError(f"{len(values)} values but {len(decisions)} decisions")
    warm = [v for v, d in zip(values, decisions) if not d.is_cold]
    cold = [v for v, d in zip(values, decisions) if d.is_cold]
    return warm, cold
