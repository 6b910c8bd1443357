"""What one LLM call measured: client-side stamps plus Ollama's own counters.

Ollama reports durations in nanoseconds and omits zero fields; the warehouse
keeps milliseconds. Throughput follows the study: eval_count / eval_duration.

Server values are validated, not trusted (``check_final_chunk``): a final chunk whose
counters have the wrong type, are not finite, negative, out of range, or disagree with
the client's own clock is an ImplausibleMetricsError (transient: the call is retried and
the attempt is an error row). The tolerances never reject a real server: they only catch
values no clock or GPU can produce (see the constants below).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from math import isfinite

from tr111.errors import ImplausibleMetricsError

NS_PER_MS = 1_000_000
FINAL_FIELDS = ("total_duration", "load_duration", "prompt_eval_count",
                "prompt_eval_duration", "eval_count", "eval_duration")
COUNT_FIELDS = ("prompt_eval_count", "eval_count")
DURATION_FIELDS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
MAX_COUNT = 2**31            # token counts at or above this are not a real context
MAX_DECODE_TPS = 1e6         # one stream's decode rate: real ones are < 1e4 tok/s
MAX_PREFILL_TPS = 1e8        # prompt processing: real ones are < 1e6 tok/s
MIN_EVAL_SHARE = 0.01        # eval_duration >= 1% of the client's first-to-last-chunk time ...
CLOCK_SLACK_MS = 50.0        # ... less this much network/scheduling jitter
OVER_WALL_SHARE = 1.10       # no server duration exceeds 110% of the client's wall ...
OVER_WALL_SLACK_MS = 100.0   # ... plus this (server and client read the same kind of clock)


@dataclass(frozen=True)
class ServerMetrics:
    """The final chunk's counters, converted to milliseconds."""

    load_duration_ms: float = 0.0
    prompt_eval_count: int = 0
    prompt_eval_duration_ms: float = 0.0
    eval_count: int = 0
    eval_duration_ms: float = 0.0
    total_duration_ms: float = 0.0
    done_reason: str | None = None

    @property
    def throughput_tps(self) -> float | None:
        if self.eval_count <= 0 or self.eval_duration_ms <= 0:
            return None
        return self.eval_count / (self.eval_duration_ms / 1000.0)

    @classmethod
    def from_final_chunk(cls, chunk: dict) -> "ServerMetrics":
        def ms(name: str) -> float:
            return float(chunk.get(name) or 0) / NS_PER_MS

        return cls(
            load_duration_ms=ms("load_duration"),
            prompt_eval_count=int(chunk.get("prompt_eval_count") or 0),
            prompt_eval_duration_ms=ms("prompt_eval_duration"),
            eval_count=int(chunk.get("eval_count") or 0),
            eval_duration_ms=ms("eval_duration"),
            total_duration_ms=ms("total_duration"),
            done_reason=chunk.get("done_reason"),
        )


def check_final_chunk(chunk: dict, *, wall_ms: float, decode_ms: float | None,
                      text_chunks: int) -> ServerMetrics:
    """The final chunk's metrics, or ImplausibleMetricsError naming the field and value.

    ``wall_ms``: request sent -> final chunk (client clock); ``decode_ms``: first text chunk ->
    final chunk (None without text); ``text_chunks``: chunks that carried text. Missing or null
    counters mean 0 (Ollama omits zero fields). Rules, in order: types (int counts, numeric
    durations, str|None done_reason); finite; non-negative; counts < 2**31; no duration beyond
    the client's wall clock (x1.1 + 100 ms); parts within total_duration (x1.01 + 1 ms);
    eval_count > 0 when text was streamed (present 0 only); eval_duration > 0 for > 1 token;
    decode <= 1e6 tok/s, prefill <= 1e8 tok/s; eval_duration >= 1% of the client's decode
    time less 50 ms (the server's clock may be shorter than the client's by network and
    queueing time, but never a hundred times).
    """
    def bad(name: str, why: str) -> ImplausibleMetricsError:
        return ImplausibleMetricsError(f"implausible server metrics: {name}={chunk.get(name)!r} {why}")

    values: dict[str, float] = {}
    for name in COUNT_FIELDS + DURATION_FIELDS:
        value = chunk.get(name)
        if value is None:
            values[name] = 0
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (name in COUNT_FIELDS and not isinstance(value, int)):
            raise bad(name, f"is not {'an integer' if name in COUNT_FIELDS else 'a number'}")
        if not isfinite(value):
            raise bad(name, "is not finite")
        if value < 0:
            raise bad(name, "is negative")
        if name in COUNT_FIELDS and value >= MAX_COUNT:
            raise bad(name, f"is not below {MAX_COUNT}")
        values[name] = value
    reason = chunk.get("done_reason")
    if reason is not None and not isinstance(reason, str):
        raise bad("done_reason", "is not a string")
    ms = {name: values[name] / NS_PER_MS for name in DURATION_FIELDS}
    limit_ms = wall_ms * OVER_WALL_SHARE + OVER_WALL_SLACK_MS
    for name in DURATION_FIELDS:
        if ms[name] > limit_ms:
            raise bad(name, f"exceeds the client's own wall time ({wall_ms:.1f} ms)")
    total = ms["total_duration"]
    for name in DURATION_FIELDS[1:]:
        if total > 0 and ms[name] > total * 1.01 + 1.0:
            raise bad(name, f"exceeds total_duration ({total:.1f} ms)")
    count, eval_ms = values["eval_count"], ms["eval_duration"]
    if "eval_count" in chunk and count == 0 and text_chunks > 0:
        raise bad("eval_count", f"but the stream carried {text_chunks} text chunks")
    if count > 1 and eval_ms <= 0:
        raise bad("eval_duration", f"for eval_count={count} tokens")
    if eval_ms > 0 and count / (eval_ms / 1000.0) > MAX_DECODE_TPS:
        raise bad("eval_duration", f"gives {count / (eval_ms / 1000.0):.3g} tok/s for eval_count={count}")
    prompt_ms = ms["prompt_eval_duration"]
    if prompt_ms > 0 and values["prompt_eval_count"] / (prompt_ms / 1000.0) > MAX_PREFILL_TPS:
        raise bad("prompt_eval_duration", f"gives more than {MAX_PREFILL_TPS:g} tok/s of prefill")
    if count > 1 and decode_ms is not None and eval_ms < MIN_EVAL_SHARE * (decode_ms - CLOCK_SLACK_MS):
        raise bad("eval_duration", f"is under {MIN_EVAL_SHARE:.0%} of the {decode_ms:.1f} ms"
                  " the client saw between first and last chunk")
    return ServerMetrics.from_final_chunk(chunk)


def has_metrics(chunk: dict) -> bool:
    """A final chunk with none of the counters is a fault, not a zero-cost call."""
    return any(name in chunk for name in FINAL_FIELDS)


@dataclass
class CallResult:
    """One attempt of one streaming call, successful or not."""

    model: str
    prompt: str
    options: dict
    started_at: datetime
    response: str = ""
    ttft_ms: float | None = None
    wall_ms: float | None = None
    # where ttft_ms and wall_ms were stamped: "socket" (tr111/ollama/wire.py) or "client"
    # (around httpx: a transport without a socket, and every row recorded before the wire clock)
    ttft_clock: str = "client"
    chunks: int = 0
    server: ServerMetrics = field(default_factory=ServerMetrics)
    status: str = "ok"
    error: str | None = None
    gpu: dict = field(default_factory=dict)  # gpu_* columns when telemetry ran
    host: dict = field(default_factory=dict)  # host_* columns: what the host did meanwhile

    @property
    def throughput_tps(self) -> float | None:
        return self.server.throughput_tps

    def as_row(self) -> dict:
        """Flat columns for the warehouse's llm_calls table."""
        server = asdict(self.server)
        return {
            "model": self.model, "prompt": self.prompt, "response": self.response,
            "options": self.options, "started_at": self.started_at,
            "ttft_ms": self.ttft_ms, "wall_ms": self.wall_ms, "ttft_clock": self.ttft_clock,
            "chunks": self.chunks,
            "status": self.status, "error": self.error,
            "throughput_tps": self.throughput_tps, "gpu": self.gpu, "host": self.host, **server,
        }
