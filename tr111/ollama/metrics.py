"""What one LLM call measured: client-side stamps plus Ollama's own counters.

Ollama reports durations in nanoseconds and omits zero fields; the warehouse
keeps milliseconds. Throughput follows the study: eval_count / eval_duration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

NS_PER_MS = 1_000_000
FINAL_FIELDS = ("total_duration", "load_duration", "prompt_eval_count",
                "prompt_eval_duration", "eval_count", "eval_duration")


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
            "ttft_ms": self.ttft_ms, "wall_ms": self.wall_ms, "chunks": self.chunks,
            "status": self.status, "error": self.error,
            "throughput_tps": self.throughput_tps, "gpu": self.gpu, "host": self.host, **server,
        }
