"""Quality scores of report-stage responses, computed at report time and stored once.

Each successful report call is scored with tr111.quality.score_report against
the prompt of the analysis call of the same run execution (that prompt carries
the data summary, so "numeric grounding" asks: are the report's numbers in the
data the model was given?). Scores live in ``quality_scores``; a call that has
a score of the current SCORER_VERSION is never scored again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator

import duckdb

from tr111.report.queries import has_table

SCORER_VERSION = "1"
BATCH = 256
SCORE_COLUMNS = ("sweep_id", "config_id", "run_number", "attempt", "stage", "run_attempt",
                 "sections_present", "markdown_structure", "numeric_grounding", "repetition",
                 "length_words", "overall", "missing_sections", "ungrounded_numbers", "notes",
                 "scorer_version", "scored_at")


def _pending_sql(con: duckdb.DuckDBPyConnection) -> str:
    scored = has_table(con, "quality_scores")
    join = ("LEFT JOIN quality_scores q ON q.sweep_id = r.sweep_id AND q.config_id = r.config_id"
            " AND q.run_number = r.run_number AND q.attempt = r.attempt") if scored else ""
    todo = "AND (q.sweep_id IS NULL OR q.scorer_version IS DISTINCT FROM ?)" if scored else ""
    return f"""
        SELECT r.config_id, r.run_number, r.attempt, r.run_attempt, r.response, a.prompt AS source
        FROM llm_calls r
        LEFT JOIN llm_calls a ON a.sweep_id = r.sweep_id AND a.config_id = r.config_id
         AND a.run_number = r.run_number AND a.run_attempt = r.run_attempt
         AND a.stage = 'analysis' AND a.status = 'ok'
        {join}
        WHERE r.sweep_id = ? AND r.stage = 'report' AND r.status = 'ok' {todo}
        QUALIFY row_number() OVER (PARTITION BY r.config_id, r.run_number, r.attempt
                                   ORDER BY a.attempt DESC NULLS LAST) = 1
        ORDER BY r.config_id, r.run_number, r.attempt"""


def count_pending(con: duckdb.DuckDBPyConnection, sweep_id: str) -> int:
    sql = _pending_sql(con)
    params = [sweep_id, SCORER_VERSION] if has_table(con, "quality_scores") else [sweep_id]
    return con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]


def score_pending(con: duckdb.DuckDBPyConnection, sweep_id: str) -> Iterator[dict]:
    """Score rows for every report call without a current score, fetched in batches."""
    from tr111.report.quality import score_report

    params = [sweep_id, SCORER_VERSION] if has_table(con, "quality_scores") else [sweep_id]
    cur = con.cursor()
    cur.execute(_pending_sql(con), params)
    now = datetime.now(UTC)
    while True:
        batch = cur.fetchmany(BATCH)
        if not batch:
            break
        for config_id, run_number, attempt, run_attempt, response, source in batch:
            score = score_report(response or "", source_text=source or "")
            notes = list(score.notes) + ([] if source else ["no analysis prompt found: grounding "
                                                            "checked against nothing"])
            yield {"sweep_id": sweep_id, "config_id": config_id, "run_number": run_number,
                   "attempt": attempt, "stage": "report", "run_attempt": run_attempt,
                   "sections_present": score.sections_present,
                   "markdown_structure": score.markdown_structure,
                   "numeric_grounding": score.numeric_grounding, "repetition": score.repetition,
                   "length_words": score.length_words, "overall": score.overall,
                   "missing_sections": ", ".join(score.missing_sections) or None,
                   "ungrounded_numbers": len(score.ungrounded_numbers),
                   "notes": json.dumps(notes), "scorer_version": SCORER_VERSION, "scored_at": now}
    cur.close()


def ensure_quality_scores(warehouse: str | Path, sweep_id: str) -> tuple[int, list[dict]]:
    """Score what is missing and store it; returns (stored, unstored rows).

    When the warehouse cannot be written (read-only file, held by another
    writer for too long) the scores come back unstored, so the report can still
    use them; the next report stores them.
    """
    from tr111.errors import Tr111Error
    from tr111.warehouse import open_read_only

    with open_read_only(warehouse) as con:
        scores = list(score_pending(con, sweep_id))
    if not scores:
        return 0, []
    from tr111.warehouse.writer import record_quality_scores

    try:
        record_quality_scores(Path(warehouse), scores)
    except (Tr111Error, duckdb.Error, OSError):
        return 0, scores
    return len(scores), []


def register_scores(con: duckdb.DuckDBPyConnection, sweep_id: str, extra: list[dict]) -> str:
    """A temp table with the stored scores of the sweep plus ``extra`` (unstored) ones; its name."""
    name = "_report_quality"
    cols = ", ".join(SCORE_COLUMNS)
    con.execute(f"DROP TABLE IF EXISTS {name}")
    if has_table(con, "quality_scores"):
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT {cols} FROM quality_scores WHERE sweep_id = ?",
                    [sweep_id])
    else:
        con.execute(f"""CREATE TEMP TABLE {name} (sweep_id VARCHAR, config_id VARCHAR,
            run_number INTEGER, attempt INTEGER, stage VARCHAR, run_attempt INTEGER,
            sections_present DOUBLE, markdown_structure DOUBLE, numeric_grounding DOUBLE,
            repetition DOUBLE, length_words INTEGER, overall DOUBLE, missing_sections VARCHAR,
            ungrounded_numbers INTEGER, notes VARCHAR, scorer_version VARCHAR, scored_at TIMESTAMPTZ)""")
    if extra:
        keys = [(r["config_id"], r["run_number"], r["attempt"]) for r in extra]
        con.executemany(f"DELETE FROM {name} WHERE config_id = ? AND run_number = ? AND attempt = ?", keys)
        marks = ", ".join("?" for _ in SCORE_COLUMNS)
        con.executemany(f"INSERT INTO {name} ({cols}) VALUES ({marks})",
                        [[r[c] for c in SCORE_COLUMNS] for r in extra])
    return name
