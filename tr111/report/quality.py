"""Automated quality scores for report-stage LLM responses (replaces TR111's manual review).

Five cheap, deterministic signals, each 0..1:

* sections_present - share of required sections found among the headings
  (``#`` headings or whole-line bold like ``**1. Executive Summary**``),
  matched case-insensitively with synonyms ("Summary", "Key Findings", ...).
* markdown_structure - 0.4 x min(1, headings/3) + 0.3 if a list or table is
  present + 0.2 if code fences are balanced + 0.1 if every table has a
  separator row and a consistent column count (vacuously true without tables).
* numeric_grounding - share of the response's numbers that match a number in
  the data summary the model was given (rule in ``is_grounded``); None when the
  response has no countable numbers.
* repetition - 1 - distinct 3-grams / all 3-grams (higher is worse).
* length_words.

overall = weighted mean of sections (0.35), structure (0.25), grounding (0.40;
dropped and the others renormalised when None) x repetition factor x length
factor. Repetition factor = 1 - clamp((repetition - 0.2) / 0.4, 0, 1): normal
prose sits below 0.2, a looping model above 0.6 scores 0. Length factor =
min(1, words / min_words) so a two-line answer cannot score high.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Sequence

DEFAULT_REQUIRED_SECTIONS = (
    "Executive Summary", "Methodology", "Results", "Analysis", "Recommendations", "Conclusion",
)
SECTION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "executive summary": ("executive summary", "summary", "overview", "abstract", "tl;dr", "key takeaways"),
    "methodology": ("methodology", "methods", "method", "approach", "test setup", "experimental setup",
                    "setup", "data ingestion", "data overview", "test environment", "procedure"),
    "results": ("results", "findings", "key findings", "performance metrics", "metrics", "measurements",
                "benchmark results"),
    "analysis": ("analysis", "discussion", "interpretation", "insights", "evaluation"),
    "recommendations": ("recommendations", "recommendation", "next steps", "suggestions", "action items",
                        "optimization", "optimisation"),
    "conclusion": ("conclusion", "conclusions", "closing", "final thoughts", "concluding remarks", "wrap-up"),
}
WEIGHTS = {"sections": 0.35, "structure": 0.25, "grounding": 0.40}
REPETITION_FREE = 0.2  # below: no penalty
REPETITION_ZERO = 0.6  # at or above: overall 0
MIN_WORDS = 100

_HASH_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BOLD_HEADING = re.compile(r"^\s*(\*\*|__)(.+?)(\*\*|__)\s*:?\s*$")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s+\S")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_NUMBERING = re.compile(r"^\s*((\d+(\.\d+)*|[ivxlc]+|[a-z])[.):]\s+|\d+(\.\d+)+\s+)", re.IGNORECASE)
# response: a number not glued to a letter/underscore on the left ("gpu60", "gemma3", "v2" are
# identifiers); units may follow ("812ms"). Source: any digit run, identifiers included.
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\.?\d)")
_ANY_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\.?\d)")
_HEADING_NUMBER = re.compile(r"^\s*(#+\s*|\*\*\s*|__\s*)\d+(\.\d+)*[.):]?\s+")
_LIST_NUMBER = re.compile(r"^\s*\d+[.)]\s+")
_WORD = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*")


@dataclass(frozen=True)
class QualityScore:
    sections_present: float
    markdown_structure: float
    numeric_grounding: float | None
    repetition: float
    length_words: int
    overall: float
    notes: tuple[str, ...] = ()
    missing_sections: tuple[str, ...] = ()
    ungrounded_numbers: tuple[str, ...] = ()


# --------------------------------------------------------------------------- sections


def headings(text: str) -> list[str]:
    """Heading texts, lower-cased with numbering and emphasis stripped."""
    found: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        match = _HASH_HEADING.match(line) or _BOLD_HEADING.match(line)
        if not match:
            continue
        raw = match.group(1) if match.re is _HASH_HEADING else match.group(2)
        cleaned = re.sub(r"[*_`]", "", raw).strip()
        cleaned = _NUMBERING.sub("", cleaned).strip(" :.-").lower()
        if cleaned:
            found.append(cleaned)
    return found


def _synonyms(section: str) -> tuple[str, ...]:
    key = section.strip().lower()
    if key in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[key]
    singular = key[:-1] if key.endswith("s") else key
    return tuple(dict.fromkeys((key, singular)))


def find_sections(text: str, required: Sequence[str]) -> tuple[list[str], list[str]]:
    """(present, missing) required sections; a heading counts if it contains a synonym as a phrase."""
    heads = headings(text)
    present, missing = [], []
    for section in required:
        patterns = [re.compile(rf"(?<![a-z]){re.escape(s)}(?![a-z])") for s in _synonyms(section)]
        (present if any(p.search(h) for h in heads for p in patterns) else missing).append(section)
    return present, missing


# --------------------------------------------------------------------------- structure


def markdown_structure(text: str) -> tuple[float, list[str]]:
    """Score 0..1 for headings, lists/tables, balanced fences, well-formed tables."""
    lines = text.splitlines()
    notes: list[str] = []
    fences = sum(1 for line in lines if _FENCE.match(line))
    heading_count = len(headings(text))
    has_list = any(_LIST_ITEM.match(line) for line in lines)
    tables = _tables(lines)
    tables_ok = all(_table_ok(t) for t in tables)
    score = 0.4 * min(1.0, heading_count / 3.0)
    score += 0.3 if (has_list or tables) else 0.0
    score += 0.2 if fences % 2 == 0 else 0.0
    score += 0.1 if tables_ok else 0.0
    if heading_count == 0:
        notes.append("no headings")
    if fences % 2:
        notes.append("unbalanced code fence")
    if not tables_ok:
        notes.append("malformed table")
    return round(score, 6), notes


def _tables(lines: Sequence[str]) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if _TABLE_ROW.match(line):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return [b for b in blocks if len(b) >= 2]


def _table_ok(rows: Sequence[str]) -> bool:
    if not _TABLE_SEP.match(rows[1]):
        return False
    widths = {len(row.strip().strip("|").split("|")) for row in rows}
    return len(widths) == 1


# --------------------------------------------------------------------------- numbers


def extract_numbers(text: str, *, response: bool = True) -> list[str]:
    """Numbers as written (commas removed), e.g. "1,234.50%" -> "1234.50".

    In a response: skip digits glued to letters (identifiers like gpu60),
    heading/list numbering ("## 2.1 Results", "3. item") and bare single-digit
    integers (ordinals and counts - too common to be evidence either way). In
    the source every digit run counts, so a model quoting "60" from
    "gpu60_ctx256" is grounded. Signs are ignored: "113.99-114.98" is a range.
    """
    pattern = _NUMBER if response else _ANY_NUMBER
    found: list[str] = []
    for line in text.splitlines():
        if response:
            line = _LIST_NUMBER.sub(" ", _HEADING_NUMBER.sub(" ", line))
        for match in pattern.finditer(line):
            integer, fraction = match.group(1).replace(",", ""), match.group(2) or ""
            if response and not fraction and len(integer) == 1:
                continue
            found.append(integer + fraction)
    return found


def _normalise(number: str) -> Decimal | None:
    try:
        value = Decimal(number)
    except InvalidOperation:
        return None
    return value.normalize() if value != 0 else Decimal(0)


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


class SourceNumbers:
    """Numbers of the source text, with cached roundings per precision."""

    def __init__(self, source_text: str):
        values = {_normalise(n) for n in extract_numbers(source_text, response=False)}
        self.values = {v for v in values if v is not None}
        self._rounded: dict[int, set[Decimal]] = {}

    def rounded(self, places: int) -> set[Decimal]:
        if places not in self._rounded:
            quantum = Decimal(1).scaleb(-places)
            bucket: set[Decimal] = set()
            for value in self.values:
                for mode in (ROUND_HALF_UP, ROUND_HALF_EVEN):
                    try:
                        bucket.add(value.quantize(quantum, rounding=mode).normalize())
                    except InvalidOperation:  # more digits than Decimal's precision (a model
                        bucket.add(value)     # wrote 1e-25): to that many places it is itself
            self._rounded[places] = bucket
        return self._rounded[places]


def is_grounded(number: str, source: SourceNumbers) -> bool:
    """Grounding rule: strip commas, %, sign and trailing zeros (114.50 == 114.5); the
    number is grounded when it equals a source number rounded (half-up or half-even)
    to the number of decimals written, e.g. "114.5" matches source 114.53, "115"
    matches 114.53, "114.6" does not. Derived values (differences, ratios) are not
    grounded unless they also appear in the source.
    """
    value = _normalise(number)
    if value is None:
        return False
    return value in source.rounded(_decimals(value))


def numeric_grounding(response: str, source_text: str | SourceNumbers) -> tuple[float | None, list[str]]:
    """(share of response numbers grounded in the source, the ungrounded ones)."""
    source = source_text if isinstance(source_text, SourceNumbers) else SourceNumbers(source_text)
    numbers = extract_numbers(response)
    if not numbers:
        return None, []
    ungrounded = [n for n in numbers if not is_grounded(n, source)]
    return 1.0 - len(ungrounded) / len(numbers), ungrounded


# --------------------------------------------------------------------------- repetition / overall


def repetition_ratio(text: str, n: int = 3) -> float:
    """1 - distinct n-grams / all n-grams over lower-cased words; 0 for texts shorter than n."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def score_report(
    response: str,
    *,
    source_text: str,
    required_sections: Sequence[str] = DEFAULT_REQUIRED_SECTIONS,
    min_words: int = MIN_WORDS,
) -> QualityScore:
    """Score one response against the data summary it was given (see module docstring)."""
    response = response or ""
    notes: list[str] = []
    present, missing = find_sections(response, required_sections)
    sections = len(present) / len(required_sections) if required_sections else 1.0
    if missing:
        notes.append("missing sections: " + ", ".join(missing))
    structure, structure_notes = markdown_structure(response)
    notes.extend(structure_notes)
    grounding, ungrounded = numeric_grounding(response, source_text or "")
    if grounding is None:
        notes.append("no numbers: grounding not scored")
    elif ungrounded:
        notes.append(f"{len(ungrounded)} number(s) not in source, e.g. " + ", ".join(ungrounded[:5]))
    repetition = repetition_ratio(response)
    words = len(response.split())

    parts = {"sections": sections, "structure": structure, "grounding": grounding}
    used = {k: v for k, v in parts.items() if v is not None}
    base = sum(WEIGHTS[k] * v for k, v in used.items()) / sum(WEIGHTS[k] for k in used)
    penalty = min(1.0, max(0.0, (repetition - REPETITION_FREE) / (REPETITION_ZERO - REPETITION_FREE)))
    if penalty > 0:
        notes.append(f"repetitive text (3-gram repetition {repetition:.2f})")
    length_factor = min(1.0, words / min_words) if min_words > 0 else 1.0
    if length_factor < 1.0:
        notes.append(f"short response ({words} words < {min_words})")
    overall = base * (1.0 - penalty) * length_factor
    return QualityScore(
        sections_present=sections, markdown_structure=structure, numeric_grounding=grounding,
        repetition=repetition, length_words=words, overall=round(overall, 6), notes=tuple(notes),
        missing_sections=tuple(missing), ungrounded_numbers=tuple(ungrounded),
    )
