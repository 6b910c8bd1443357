"""Fault names the fake Ollama understands, and the small parsers it shares.

Faults are plain strings (``"drop:3"``) so that tests, benchmark scripts and the
command line all speak the same language; they are parsed once, at injection,
so that a typo fails in the test that wrote it rather than mid-request.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass

#: name -> (type of the parameter after the colon, default when omitted)
FAULT_PARAMS: dict[str, tuple[type | None, float | None]] = {
    "http500": (None, None),     # 500 {"error": ...}
    "http503": (None, None),     # 503 {"error": ...} (Ollama's "server busy")
    "notfound": (None, None),    # 404 model not found, whatever the model
    "refuse": (None, None),      # close the connection without any response
    "drop": (int, 1),            # N token chunks, then close: no final chunk
    "stall": (float, 60.0),      # 1-2 chunks, then S seconds of silence
    "garbage": (None, None),     # a non-JSON line in the middle of the stream
    "error_chunk": (None, None),  # mid-stream {"error": ...} line, then the stream ends
    "no_metrics": (None, None),  # final chunk without durations or counts
    "slow_first": (float, 500.0),  # extra MS before the first chunk
    "die": (int, 2),             # N token chunks, then the whole server goes down (go_down())
    "bad_metrics": (str, None),  # FIELD=JSON: the final chunk's FIELD set to JSON (NaN, "12", -1 ...)
}
FAULT_NAMES = tuple(FAULT_PARAMS)


@dataclass(frozen=True)
class Fault:
    """One parsed fault: ``kind`` is a FAULT_NAMES entry, ``arg`` its parameter."""

    kind: str
    arg: float | str | None = None

    def __str__(self) -> str:
        if self.arg is None:
            return self.kind
        return f"{self.kind}:{self.arg if isinstance(self.arg, str) else format(self.arg, 'g')}"

    def final_override(self) -> tuple[str, object]:
        """``bad_metrics``' (field, value) for the final chunk."""
        name, _, raw = str(self.arg).partition("=")
        return name, json.loads(raw)


def parse_fault(spec: str) -> Fault:
    """Parse ``"name"`` or ``"name:param"``; ValueError on anything unknown."""
    name, _, raw_arg = spec.strip().partition(":")
    if name not in FAULT_PARAMS:
        raise ValueError(f"unknown fault {spec!r}; known: {', '.join(FAULT_NAMES)}")
    arg_type, default = FAULT_PARAMS[name]
    if arg_type is None:
        if raw_arg:
            raise ValueError(f"fault {name!r} takes no parameter, got {spec!r}")
        return Fault(name)
    if arg_type is str:
        field, eq, value = raw_arg.partition("=")
        try:
            json.loads(value)
        except ValueError:
            eq = ""
        if not field or not eq:
            raise ValueError(f"fault {name!r} needs FIELD=JSON (e.g. eval_duration=1), got {raw_arg!r}")
        return Fault(name, raw_arg)
    if not raw_arg:
        return Fault(name, default)
    try:
        value = arg_type(raw_arg)
    except ValueError:
        raise ValueError(f"fault {name!r} needs a {arg_type.__name__}, got {raw_arg!r}") from None
    if value < 0:
        raise ValueError(f"fault {name!r} needs a non-negative parameter, got {raw_arg!r}")
    return Fault(name, value)


_DURATION_PART = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_KEEP_ALIVE_S = 300.0


def parse_keep_alive(value: object) -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m").

    Returns None for "forever" (negative values). Missing or unparsable -> the 5 min default,
    as Ollama falls back to its default rather than failing the request.
    """
    if value is None or isinstance(value, bool):
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                return DEFAULT_KEEP_ALIVE_S
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return None if seconds < 0 else seconds


_SPIN_BELOW_NS = 1_500_000  # sleeps overshoot by ~0.1 ms; spin (yielding) for the last stretch


def wait_until(deadline_ns: int, halt: threading.Event) -> bool:
    """Block until ``perf_counter_ns() >= deadline_ns`` (~0.1 ms accurate) or ``halt`` is set.

    Returns False when halted, so a server going down never waits out a long delay.
    """
    while True:
        remaining = deadline_ns - time.perf_counter_ns()
        if halt.is_set():
            return False
        if remaining <= 0:
            return True
        if remaining > _SPIN_BELOW_NS:
            halt.wait((remaining - _SPIN_BELOW_NS + 500_000) / 1e9)
        else:
            time.sleep(0)  # yield the GIL to other streams while spinning
