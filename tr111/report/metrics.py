"""What the report measures, per stage: the metrics, the two stages, and their pairs (measures).

Why per stage: the analysis call carries the data summary (a long prompt), the
report call only the analysis (a short one), so their TTFTs differ by an order
of magnitude; pooled, a config's TTFT is bimodal by construction. Every table,
ranking, test and regression check is over one metric at one stage (a Measure).
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("analysis", "report")
STAGE_PROMPTS = {"analysis": "long prompt: the data summary", "report": "short prompt: the analysis"}


@dataclass(frozen=True)
class Metric:
    """A per-call quantity; ``same_prompt``: only comparable between calls that processed the
    same prompt (TTFT grows with the prompt; a truncated prompt makes it look fast)."""

    key: str  # "decode" | "prefill" | "ttft": the key of a stage entry's DistributionSummary
    name: str
    label: str
    unit: str
    higher_is_better: bool
    json_name: str  # its name in summary.json, compare --json and the exports
    same_prompt: bool = False


DECODE = Metric("decode", "decode rate", "Decode rate", "tok/s", True, "decode_tps")
PREFILL = Metric("prefill", "prefill rate", "Prefill rate", "tok/s", True, "prefill_tps")
TTFT = Metric("ttft", "warm TTFT", "Warm TTFT", "ms", False, "warm_ttft_ms", same_prompt=True)
METRICS = (DECODE, PREFILL, TTFT)


@dataclass(frozen=True)
class Measure:
    """One metric at one stage: the unit of every ranking, test and verdict."""

    metric: Metric
    stage: str

    @property
    def key(self) -> str:
        return f"{self.metric.key}_{self.stage}"

    @property
    def name(self) -> str:
        return f"{self.metric.name} ({self.stage})"

    @property
    def label(self) -> str:
        return f"{self.metric.label} ({self.stage})"

    @property
    def unit(self) -> str:
        return self.metric.unit

    @property
    def higher_is_better(self) -> bool:
        return self.metric.higher_is_better


MEASURES = tuple(Measure(m, s) for m in METRICS for s in STAGES)  # ANOVA, sensitivity, chimera rows
CHECKED = tuple(Measure(m, s) for m in (DECODE, TTFT) for s in STAGES)  # regressions, best-of picks
BY_KEY = {m.key: m for m in MEASURES}
