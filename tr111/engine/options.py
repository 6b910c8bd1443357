"""Ollama request options: which ones reload the runner, which only steer sampling.

Ollama splits its options the same way (api.Runner vs api.Options): a change in
a runner option makes the scheduler reload the model, a sampling option never does.
Defaults follow Ollama's DefaultOptions, except num_ctx (see DEFAULT_NUM_CTX).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from tr111.errors import OptionError

log = logging.getLogger(__name__)

# Ollama's default context is 2048 in older releases and 4096 in newer ones;
# 2048 keeps the KV cache and prompt truncation cheap on a small CPU machine.
DEFAULT_NUM_CTX = 2048
DEFAULT_NUM_BATCH = 512
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * 1_000_000_000
KEEP_ALIVE_FOREVER_NS = 2**63 - 1  # Ollama's time.Duration(math.MaxInt64)


def default_thread_count() -> int:
    """All CPUs this process may use (llama-cpp-python would take only half)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


@dataclass(frozen=True)
class RunnerOptions:
    """Load-time settings; a loaded model is reused only when these are equal."""

    n_ctx: int = DEFAULT_NUM_CTX
    n_gpu_layers: int = -1  # Ollama's num_gpu -1: offload what the backend can
    n_threads: int = 1
    n_batch: int = DEFAULT_NUM_BATCH
    use_mmap: bool = True
    use_mlock: bool = False


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request settings that never reload the model."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1
    num_predict: int = -1
    num_keep: int = 4
    stop: tuple[str, ...] = ()


# option name -> (group, field, type)
_RUNNER_FIELDS = {
    "num_ctx": ("n_ctx", int),
    "num_gpu": ("n_gpu_layers", int),
    "num_thread": ("n_threads", int),
    "num_batch": ("n_batch", int),
    "use_mmap": ("use_mmap", bool),
    "use_mlock": ("use_mlock", bool),
}
_SAMPLING_FIELDS = {
    "temperature": ("temperature", float),
    "top_k": ("top_k", int),
    "top_p": ("top_p", float),
    "min_p": ("min_p", float),
    "typical_p": ("typical_p", float),
    "repeat_penalty": ("repeat_penalty", float),
    "repeat_last_n": ("repeat_last_n", int),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "mirostat": ("mirostat", int),
    "mirostat_tau": ("mirostat_tau", float),
    "mirostat_eta": ("mirostat_eta", float),
    "seed": ("seed", int),
    "num_predict": ("num_predict", int),
    "num_keep": ("num_keep", int),
    "stop": ("stop", list),
}
# Valid Ollama options this engine accepts but has no use for (no log line).
_ACCEPTED_UNUSED = {"numa", "main_gpu", "low_vram", "vocab_only", "f16_kv", "logits_all",
                    "penalize_newline", "tfs_z"}


# Bounds of numeric options, checked before any conversion (no NaN, no overflow).
# Integers are Go ints in Ollama and int32 in llama.cpp; floats are float32.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_NUM_CTX = 2**24  # beyond any model; the memory check refuses far smaller ones
MAX_THREADS = 512  # GGML_MAX_N_THREADS
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "num_ctx": (0, MAX_NUM_CTX),  # 0: the default
    "num_gpu": (-1, INT32_MAX),  # -1: all layers the backend can take
    "num_thread": (0, MAX_THREADS),  # 0: the default
    "num_batch": (0, 2**20),  # 0: the default
    "top_k": (0, INT32_MAX),
    "repeat_last_n": (-1, INT32_MAX),  # -1: the whole context
    "mirostat": (0, 2),
    "seed": (INT64_MIN, INT64_MAX),  # negative: random
    "num_predict": (-2, INT32_MAX),  # -1: until a stop, -2: fill the context
    "num_keep": (-1, INT32_MAX),
    "temperature": (0, FLOAT32_MAX),
    "top_p": (0, 1),
    "min_p": (0, 1),
    "typical_p": (0, 1),
    "repeat_penalty": (0, FLOAT32_MAX),
    "presence_penalty": (-FLOAT32_MAX, FLOAT32_MAX),
    "frequency_penalty": (-FLOAT32_MAX, FLOAT32_MAX),
    "mirostat_tau": (0, FLOAT32_MAX),
    "mirostat_eta": (0, FLOAT32_MAX),
}


def json_number_text(value: float | int) -> str:
    """A number as JSON (or JavaScript) spells it, shortened: NaN, Infinity, 1e+308."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}...({len(text)} digits)"


def _check_range(key: str, value: float | int) -> None:
    """400 naming the option when ``value`` is NaN, infinite or out of its range."""
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"option {key!r} must be a finite number, got {json_number_text(value)}")
    low, high = _BOUNDS.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        wanted = (f"at least {json_number_text(low)}" if value < low and high >= FLOAT32_MAX
                  else f"between {json_number_text(low)} and {json_number_text(high)}")
        raise OptionError(f"option {key!r} must be {wanted}, got {json_number_text(value)}")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Type rules of Ollama's Options.FromMap (JSON numbers arrive as floats), then ranges."""
    if kind is bool:
        if not isinstance(value, bool):
            raise OptionError(f"option {key!r} must be of type boolean")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {key!r} must be of type integer")
        _check_range(key, value)
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {key!r} must be of type float32")
        _check_range(key, value)
        return float(value)
    if isinstance(value, str):  # a single stop string is tolerated
        return (value,)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise OptionError(f"option {key!r} must be of an array of strings")
    return tuple(value)


def parse_options(
    raw: Any, runner_defaults: RunnerOptions
) -> tuple[RunnerOptions, SamplingOptions]:
    """Split a request's ``options`` object; unknown keys are logged and ignored."""
    if raw is None:
        return runner_defaults, SamplingOptions()
    if not isinstance(raw, dict):
        raise OptionError("options must be a JSON object")
    runner_values: dict[str, Any] = {}
    sampling_values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        if value is None:
            continue
        if key in _RUNNER_FIELDS:
            field, kind = _RUNNER_FIELDS[key]
            runner_values[field] = _coerce(key, value, kind)
        elif key in _SAMPLING_FIELDS:
            field, kind = _SAMPLING_FIELDS[key]
            sampling_values[field] = _coerce(key, value, kind)
        elif key not in _ACCEPTED_UNUSED:
            unknown.append(key)
    if unknown:  # one line, names shortened: keys come from the client
        shown = ", ".join(repr(key[:40]) for key in unknown[:5])
        log.warning("invalid option provided option=%s%s", shown,
                    f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
    if runner_values.get("n_ctx", 1) <= 0:
        runner_values.pop("n_ctx")
    if runner_values.get("n_threads", 1) <= 0:  # Ollama: 0 lets the runtime decide
        runner_values.pop("n_threads")
    if runner_values.get("n_batch", 1) <= 0:
        runner_values.pop("n_batch")
    runner = RunnerOptions(**{**runner_defaults.__dict__, **runner_values})
    return runner, SamplingOptions(**sampling_values)


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
               "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_keep_alive(raw: Any) -> int:
    """keep_alive in ns as Ollama's api.Duration reads it; negative means forever.

    Accepts a number of seconds or a Go duration string ("5m", "1h30m", "-1m");
    unlike Go, a bare number string ("300", "-1") is read as seconds.
    """
    if raw is None:
        return DEFAULT_KEEP_ALIVE_NS
    if isinstance(raw, bool):
        raise OptionError("Unsupported type: 'bool'")
    if isinstance(raw, (int, float)):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise OptionError(f"keep_alive must be a finite number of seconds, got {json_number_text(raw)}")
        if raw < 0:
            return KEEP_ALIVE_FOREVER_NS
        return _saturate(raw * 1_000_000_000)
    if not isinstance(raw, str):
        raise OptionError(f"Unsupported type: '{type(raw).__name__}'")
    text = raw.strip()
    negative = text.startswith("-")
    body = text.lstrip("+-")
    if re.fullmatch(r"\d+(?:\.\d*)?", body):  # lenient: a bare number is seconds
        seconds = float(body)
        return KEEP_ALIVE_FOREVER_NS if negative and seconds > 0 else _saturate(seconds * 1e9)
    total_ns = 0.0
    position = 0
    for match in _GO_DURATION_PART.finditer(body):
        if match.start() != position:
            break
        total_ns += float(match.group(1)) * _GO_UNIT_NS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        shown = raw if len(raw) <= 64 else f"{raw[:32]}...({len(raw)} characters)"
        raise OptionError(f'time: invalid duration "{shown}"')
    if negative and total_ns > 0:
        return KEEP_ALIVE_FOREVER_NS
    return _saturate(total_ns)


def _saturate(total_ns: float | int) -> int:
    """A duration past Go's largest (~292 years) is forever: 1e308 s must not overflow."""
    if total_ns >= KEEP_ALIVE_FOREVER_NS:
        return KEEP_ALIVE_FOREVER_NS
    return int(total_ns)
