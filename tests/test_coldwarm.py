"""Cold/warm classification: position, load_duration evidence, and TTFT fallback."""

from __future__ import annotations

import pytest

from tr111.run.coldwarm import CallTiming, classify_cold, cold_flags, cold_threshold_ms, split_warm_cold


def _sweep():
    """Two configs in execution order: restart, 3 warm calls, reload (num_ctx change), 2 warm calls."""
    return [
        CallTiming(3100.0, 3600.0, first_after_restart=True),
        CallTiming(2.1, 310.0),
        CallTiming(0.1, 305.0),
        CallTiming(4.5, 298.0),
        CallTiming(812.0, 1290.0, options_changed=True),
        CallTiming(1.8, 302.0),
        CallTiming(3.0, 300.0),
    ]


def test_threshold_is_floor_or_five_times_warm_median():
    calls = _sweep()
    assert cold_threshold_ms(calls) == 50.0  # 5 x median(2.1, 0.1, 4.5, 1.8, 3.0) = 10.5 < 50
    noisy = [CallTiming(20.0), CallTiming(24.0), CallTiming(22.0), CallTiming(900.0, first_after_restart=True)]
    assert cold_threshold_ms(noisy) == pytest.approx(110.0)
    assert cold_threshold_ms([]) == 50.0


def test_first_after_restart_and_reload_are_cold_warm_calls_are_not():
    decisions = classify_cold(_sweep())
    assert [d.is_cold for d in decisions] == [True, False, False, False, True, False, False]
    assert decisions[0].reason.startswith("first call after restart") and decisions[0].rule == "position"
    assert decisions[4].rule == "load_duration"
    assert "load_duration 812 ms >= threshold 50 ms" in decisions[4].reason
    assert decisions[2].reason == "warm: load_duration 0.1 ms"
    assert all(d.threshold_ms == 50.0 for d in decisions)


def test_unexpected_mid_sequence_unload_is_cold():
    calls = _sweep()
    calls.insert(3, CallTiming(1500.0, 1900.0))  # keep_alive expired: a load with no option change
    decisions = classify_cold(calls)
    assert decisions[3].is_cold and decisions[3].rule == "load_duration"


def test_first_after_restart_with_tiny_load_is_still_cold_and_says_why():
    decision = classify_cold([CallTiming(2.0, 300.0, first_after_restart=True), CallTiming(1.0, 290.0)])[0]
    assert decision.is_cold and "counted cold by position" in decision.reason


def test_options_change_without_reload_is_warm():
    decisions = classify_cold([CallTiming(1.0, 300.0), CallTiming(2.5, 305.0, options_changed=True)])
    assert not decisions[1].is_cold and "no reload" in decisions[1].reason


def test_missing_load_duration_falls_back_to_position_then_ttft():
    calls = [
        {"load_duration_ms": None, "ttft_ms": 300.0},
        {"load_duration_ms": None, "ttft_ms": 310.0},
        {"load_duration_ms": None, "prompt_eval_duration_ms": 2900.0},
        {"load_duration_ms": None, "ttft_ms": 305.0, "options_changed": True},
        {"load_duration_ms": None, "ttft_ms": 320.0},
    ]
    decisions = classify_cold(calls)
    assert [d.is_cold for d in decisions] == [False, False, True, True, False]
    assert decisions[2].rule == "ttft" and decisions[3].rule == "position"


def test_helpers_split_values_by_decision():
    calls = _sweep()
    decisions = classify_cold(calls)
    warm, cold = split_warm_cold([c.ttft_ms for c in calls], decisions)
    assert cold == [3600.0, 1290.0] and max(warm) < 400
    assert cold_flags(calls) == [d.is_cold for d in decisions]
    with pytest.raises(ValueError):
        split_warm_cold([1.0], decisions)
