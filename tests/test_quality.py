"""Quality scores on hand-written responses with known properties."""

from __future__ import annotations

import pytest

import numpy as np
from scipy import stats as sps

from tr111.report.quality import (
    QualityScore,
    extract_numbers,
    find_sections,
    is_grounded,
    numeric_grounding,
    repetition_ratio,
    score_report,
    SourceNumbers,
)

SOURCE = """Benchmark data summary
files: 101 (csv 28, json 44, md 29)
config gpu60_ctx256_temp0p6: throughput_tps mean 114.53, ttft_ms mean 1346.82, cv 2.1%
config gpu80_ctx1024_temp0p6: throughput_tps mean 114.98, ttft_ms mean 1310.19
tokens_per_second range 77.62 - 187.18, average 14.59
total tokens 7,557
"""

GOOD = """# Technical Report: Gemma3 Benchmark Analysis

## 1. Executive Summary
The dataset holds 101 benchmark files. Throughput is stable across configurations, while
time to first token varies far more than generation speed does.

## 2. Methodology
We ingested 28 CSV, 44 JSON and 29 Markdown files and compared each configuration's mean metrics.

## 3. Results
| Config | Throughput (tok/s) | TTFT (ms) |
|--------|--------------------|-----------|
| gpu60_ctx256_temp0p6 | 114.5 | 1346.82 |
| gpu80_ctx1024_temp0p6 | 114.98 | 1310.19 |

- Token rates range from 77.62 to 187.18 tokens per second.
- In total 7,557 tokens were generated.

## 4. Analysis
Generation speed is hardware bound: the two configurations differ by well under one percent.
Latency to the first token is dominated by model loading on the first call of a run.

## 5. Recommendations
* Prefer the smaller context when quality is equivalent.
* Measure warm and cold calls separately before drawing latency conclusions.

## 6. Conclusion
Both configurations deliver about 115 tok/s; the lighter one is the better default choice here.
"""


def test_good_report_scores_high():
    score = score_report(GOOD, source_text=SOURCE)
    assert isinstance(score, QualityScore)
    assert score.sections_present == 1.0 and score.missing_sections == ()
    assert score.markdown_structure == pytest.approx(1.0)
    assert score.numeric_grounding == 1.0, score.ungrounded_numbers
    assert score.repetition < 0.1
    assert score.overall > 0.9
    assert score.length_words == len(GOOD.split())


def test_degenerate_repetitive_response_scores_low():
    looping = "The model is very fast and the results are good.\n" * 30
    score = score_report(looping, source_text=SOURCE)
    assert score.repetition > 0.85
    assert score.sections_present == 0.0
    assert score.numeric_grounding is None
    assert score.overall < 0.05
    assert any("repetitive" in note for note in score.notes)


def test_good_report_followed_by_a_loop_is_penalised():
    score = score_report(GOOD + "\nThe end is near.\n" * 200, source_text=SOURCE)
    assert score.sections_present == 1.0
    assert score.overall < 0.3


def test_invented_numbers_lower_grounding():
    invented = GOOD.replace("114.98", "121.40").replace("187.18", "250.00").replace("7,557", "9,999")
    score = score_report(invented, source_text=SOURCE)
    good = score_report(GOOD, source_text=SOURCE)
    assert score.numeric_grounding < good.numeric_grounding
    assert set(score.ungrounded_numbers) == {"121.40", "250.00", "9999"}
    assert score.overall < good.overall
    assert any("not in source" in note for note in score.notes)


def test_loose_section_matching_with_synonyms_and_bold_headings():
    text = ("**1. Summary**\ntext\n\n**2. Key Findings:**\ntext\n\n### Discussion\n\n"
            "## Next Steps\n\n## Final Thoughts\n\n## Approach\n")
    present, missing = find_sections(text, ("Executive Summary", "Methodology", "Results", "Analysis",
                                            "Recommendations", "Conclusion"))
    assert missing == []
    present, missing = find_sections("## Results\n", ("Results", "Appendix"))
    assert present == ["Results"] and missing == ["Appendix"]
    # a custom section name matches itself, singular or plural
    assert find_sections("## Appendices\n## Appendix A\n", ("Appendix",))[1] == []


def test_headings_inside_code_fences_do_not_count():
    text = "```\n# Executive Summary\n```\n"
    assert find_sections(text, ("Executive Summary",))[1] == ["Executive Summary"]


def test_structure_penalises_unbalanced_fences_and_bad_tables():
    broken = "## A\n## B\n## C\n| a | b |\n| c | d |\n```python\nx = 1\n"
    score = score_report(broken, source_text="", required_sections=())
    assert score.markdown_structure == pytest.approx(0.4 + 0.3)
    assert "unbalanced code fence" in score.notes and "malformed table" in score.notes
    assert score.sections_present == 1.0  # nothing required


@pytest.mark.parametrize("number, grounded", [
    ("114.50", True),   # trailing zeros stripped
    ("114.5", True),    # source 114.53 rounded to one decimal
    ("115", True),      # ... or to an integer
    ("114.6", False),
    ("1346.8", True),
    ("7557", True),
    ("14.6", True),
    ("14.60", True),
    ("2.10", True),     # from "2.1%"
    ("60", True),       # digits inside identifiers count in the source
    ("12.0", False),
])
def test_number_grounding_rule(number, grounded):
    assert is_grounded(number, SourceNumbers(SOURCE)) is grounded


def test_a_number_with_more_decimals_than_decimal_can_hold_is_judged_not_raised():
    """Found by the quick sweep on the embedded engine: the model wrote a number with ~25
    decimals, rounding the source's 123456789 to that many places overflowed Decimal's 28
    digits, and the whole report failed with decimal.InvalidOperation."""
    source = SourceNumbers("rows: 123456789, mean 114.53")
    assert is_grounded("0.0000000000000000000000001", source) is False
    assert is_grounded("123456789.0000000000000000000000", source) is True


def test_number_extraction_skips_identifiers_numbering_and_single_digits():
    text = "## 2.1 Results\n3. gpu60_ctx256 ran 3 times at 114.5 tok/s (1,234 tokens, 812ms, 12.5%)\n"
    assert extract_numbers(text) == ["114.5", "1234", "812", "12.5"]
    assert numeric_grounding("no numbers here", SOURCE) == (None, [])
    assert extract_numbers("range 113.99-114.98") == ["113.99", "114.98"]


def test_repetition_ratio_bounds():
    assert repetition_ratio("") == 0.0
    assert repetition_ratio("one two three four five") == 0.0
    assert repetition_ratio("a b c " * 50) > 0.95


def test_quality_below_baseline_uses_margin_and_welch_matches_scipy():
    """The report's rule (sections.quality): below = mean < baseline - margin; Welch p as scipy's."""
    from tr111.report.sections import QUALITY_MARGIN, quality

    scores = {
        "baseline_default": [0.90, 0.92, 0.88],
        "similar": [0.86, 0.87, 0.85],
        "worse": [0.60, 0.62, 0.58],
        "noisy_worse": [0.30, 0.95, 0.50],
        "one_score": [0.10],
    }
    qstats = {cid: {"config_id": cid, "n": len(v), "overall": float(np.mean(v)),
                    "overall_sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}
              for cid, v in scores.items()}
    items = [{"config_id": cid, "is_baseline": cid == "baseline_default"} for cid in scores]
    result = quality(items, qstats)
    assert result["below"] == ["worse", "noisy_worse", "one_score"]
    rows = {r["config_id"]: r for r in result["rows"]}
    assert rows["worse"]["diff"] == pytest.approx(-0.30) and rows["similar"]["below"] is False
    assert QUALITY_MARGIN == pytest.approx(0.10)
    for cid in ("similar", "worse", "noisy_worse"):
        ref = sps.ttest_ind(scores[cid], scores["baseline_default"], equal_var=False)
        assert rows[cid]["test"].p_value == pytest.approx(ref.pvalue, rel=1e-10), cid
        assert rows[cid]["test"].t == pytest.approx(ref.statistic, rel=1e-10), cid
        v = scores[cid]
        low, high = sps.t.interval(0.95, df=len(v) - 1, loc=np.mean(v), scale=sps.sem(v))
        # a score lies in [0, 1]: its interval is the t interval limited to that range
        assert rows[cid]["ci"] == pytest.approx((max(low, 0.0), min(high, 1.0)), rel=1e-12)
    assert rows["noisy_worse"]["ci"][0] == 0.0  # the plain t interval would go below zero
    assert rows["worse"]["test"].significant and not rows["noisy_worse"]["test"].significant
    assert rows["one_score"]["test"].p_value is None and rows["one_score"]["ci"] == (None, None)
