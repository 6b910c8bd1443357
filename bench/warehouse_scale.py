"""Warehouse at scale: a synthetic 1,000,000-call warehouse, then the report and config_summary.

The warehouse is built through the real schema (``warehouse.migrations.migrate``) with DuckDB
bulk ``INSERT ... SELECT ... FROM range(n)`` statements, rows consistent across tables:
a year of nightly sweeps of the study's matrix (19 configs: baseline + 3 num_gpu x 3 num_ctx
x 2 temperature), 8 models a night (2,923 sweeps), 6 runs per config, 3 calls per run
(warm-up, analysis, report): 2,923 x 19 x 6 x 3 = 999,666 calls, topped up to the requested
count with failed first attempts (retried calls). Values are deterministic (hash-based),
shaped like the study (~114 tok/s, TTFT in the hundreds of ms, cold first calls).

Timed, median of ``--repeats``:

* ``tr111 report --sweep latest`` as a subprocess (``python -m tr111.cli``): wall, CPU and
  peak RSS of the child (target: <= 2 s);
* ``SELECT * FROM config_summary WHERE sweep_id = ?`` and the full ``SELECT * FROM
  config_summary``, in-process on a read-only connection, plus the filtered query written
  against the base tables (what a view with the filter pushed down costs).

    python -m bench.warehouse_scale [--calls 1000000] [--repeats 3] [--keep FILE] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from bench._common import machine_line, median, reproduce_line, run_child

TARGET_REPORT_S = 2.0
MODELS = ("gemma3:latest", "gemma3:1b", "gemma3:270m", "llama3.1:8b", "qwen2.5:7b", "mistral:7b",
          "phi4-mini:latest", "granite3.3:8b")
STAGES = ("warmup", "analysis", "report")
REPORT_TEXT = ("# Technical report\\n\\n## Executive summary\\nThroughput held at {tps} tok/s with a "
               "median TTFT of {ttft} ms.\\n\\n## Results\\n| metric | value |\\n|---|---|\\n"
               "| tokens_per_second | {tps} |\\n| ttft_ms | {ttft} |\\n\\n## Recommendations\\n"
               "Keep num_ctx small for agent workloads; report TTFT medians.\\n")


def config_rows() -> list[tuple]:
    """(config_id, num_gpu, num_ctx, temperature, options_json, is_baseline, position)."""
    out = [("baseline_default", None, None, None, "{}", True, 0)]
    for gpu in (60, 80, 120):
        for ctx in (256, 512, 1024):
            for temp in (0.6, 0.8):
                cid = f"gpu{gpu}_ctx{ctx}_temp{str(temp).replace('.', 'p')}"
                options = json.dumps({"num_ctx": ctx, "num_gpu": gpu, "temperature": temp}, sort_keys=True)
                out.append((cid, gpu, ctx, temp, options, False, len(out)))
    return out


def build_warehouse(path: Path, *, calls: int, runs_per_config: int = 6, sweeps_per_night: int = 8,
                    text_chars: int = 300) -> dict:
    """Create ``path`` (must not exist) holding about ``calls`` llm_calls rows; returns counts."""
    import duckdb

    from tr111.matrix import load_matrix
    from tr111.warehouse.migrations import migrate

    configs = config_rows()
    per_sweep = len(configs) * runs_per_config * len(STAGES)
    n_sweeps = max(1, calls // per_sweep)
    extra_calls = max(0, calls - n_sweeps * per_sweep)  # failed first attempts, retried
    matrix = json.loads(load_matrix("tr111", runs=runs_per_config).to_json())
    t0 = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        con.execute("CREATE TEMP TABLE cfg (config_id VARCHAR, num_gpu INTEGER, num_ctx INTEGER, "
                    "temperature DOUBLE, options_json VARCHAR, is_baseline BOOLEAN, position INTEGER)")
        con.executemany("INSERT INTO cfg VALUES (?, ?, ?, ?, ?, ?, ?)", configs)
        con.execute("CREATE TEMP TABLE models (m INTEGER, model VARCHAR)")
        con.executemany("INSERT INTO models VALUES (?, ?)", list(enumerate(MODELS[:sweeps_per_night])))
        # u(x): a deterministic uniform [0, 1) from a hash; z(x): ~N(0, 1) (sum of 4 uniforms).
        con.execute("CREATE TEMP MACRO u(x) AS (hash(x) % 1000003) / 1000003.0")
        con.execute("CREATE TEMP MACRO z(x) AS (u(x || 'a') + u(x || 'b') + u(x || 'c') + u(x || 'd') - 2.0) * 1.732")
        con.execute("""
            CREATE TEMP TABLE sw AS
            SELECT i AS sweep_no,
                   TIMESTAMPTZ '2025-01-01 02:30:00+00' + to_days(CAST(i // ? AS INTEGER))
                       + to_minutes(CAST(i % ? AS INTEGER) * 40) AS started_at,
                   i % ? AS m
            FROM range(?) t(i)""", [sweeps_per_night, sweeps_per_night, sweeps_per_night, n_sweeps])
        con.execute("""
            INSERT INTO sweeps
            SELECT 'sweep-' || strftime(started_at, '%Y%m%d-%H%M%S') || '-' || lpad(CAST(sweep_no % 10000 AS VARCHAR), 4, '0'),
                   started_at, started_at + INTERVAL 35 MINUTE, 'completed', models.model,
                   'http://127.0.0.1:11434', '0.12.0', replace(?, 'gemma3:latest', models.model),
                   'bench-host', 'ollama', NULL, '0.1.0', '{"host": "bench-host", "synthetic": true}',
                   true, false, 'corpus/sample', NULL
            FROM sw JOIN models USING (m)""", [json.dumps(matrix, sort_keys=True)])
        con.execute("""
            CREATE TEMP TABLE swid AS
            SELECT sw.sweep_no, s.sweep_id, s.started_at FROM sw
            JOIN sweeps s ON s.sweep_id = 'sweep-' || strftime(sw.started_at, '%Y%m%d-%H%M%S') || '-'
                || lpad(CAST(sw.sweep_no % 10000 AS VARCHAR), 4, '0')""")
        con.execute("""
            INSERT INTO configs (sweep_id, config_id, num_gpu, num_ctx, temperature, options_json,
                                 is_baseline, show_json, ps_json, size_vram, context_length, position)
            SELECT swid.sweep_id, cfg.config_id, num_gpu, num_ctx, temperature, options_json, is_baseline,
                   '{"details": {"family": "gemma3"}}', NULL, 3300000000 + coalesce(num_ctx, 4096) * 65536,
                   coalesce(num_ctx, 4096), position
            FROM swid CROSS JOIN cfg""")
        con.execute("""
            CREATE TEMP TABLE r AS
            SELECT swid.sweep_id, swid.started_at AS sweep_start, cfg.config_id, cfg.position, cfg.num_gpu,
                   cfg.num_ctx, cfg.temperature, cfg.options_json, n.run_number,
                   swid.sweep_no * 1000 + cfg.position * 20 + n.run_number AS k
            FROM swid CROSS JOIN cfg CROSS JOIN (SELECT range + 1 AS run_number FROM range(?)) n""",
                    [runs_per_config])
        con.execute("""
            CREATE TEMP TABLE c AS
            SELECT r.*, st.stage, st.ord, r.k * 4 + st.ord AS ck,
                   CASE WHEN st.stage = 'warmup' THEN 1 ELSE 600 + CAST(u(r.k * 4 + st.ord) * 1000 AS INTEGER) END AS eval_count,
                   greatest(60.0, 114.5 - (coalesce(r.num_ctx, 2048) - 256) / 1000.0
                       + (coalesce(r.num_gpu, 60) - 60) / 200.0 + 1.2 * z(r.k * 4 + st.ord)) AS tps,
                   r.run_number = 1 AND st.ord = 0 AS cold,
                   greatest(40.0, exp(5.6 + 0.35 * z(r.k * 4 + st.ord + 7))) AS ttft
            FROM r CROSS JOIN (VALUES ('warmup', 0), ('analysis', 1), ('report', 2)) st(stage, ord)""")
        con.execute(f"""
            INSERT INTO llm_calls BY NAME
            SELECT sweep_id, config_id, run_number, stage, 1 AS attempt, 1 AS run_attempt,
                   'ok' AS status, NULL AS error, 'model' AS model, options_json,
                   'Run nonce ' || ck || '. Analyse the benchmark data: ' || repeat('throughput ttft load ', {max(1, text_chars // 21)}) AS prompt,
                   CASE WHEN stage = 'report'
                        THEN replace(replace(?, '{{tps}}', CAST(round(tps, 2) AS VARCHAR)), '{{ttft}}', CAST(round(ttft, 1) AS VARCHAR))
                        ELSE 'Analysis ' || ck || ': ' || repeat('stable throughput, TTFT varies. ', {max(1, text_chars // 32)}) END AS response,
                   ttft + CASE WHEN cold THEN 2100.0 ELSE 0 END AS ttft_ms,
                   ttft + CASE WHEN cold THEN 2100.0 ELSE 0 END + eval_count / tps * 1000 + 1.2 AS wall_ms,
                   CASE WHEN cold THEN 2100.0 + 200 * u(ck || 'l') ELSE 0.8 END AS load_duration_ms,
                   180 + CAST(u(ck || 'p') * 300 AS INTEGER) AS prompt_eval_count,
                   ttft * 0.8 AS prompt_eval_duration_ms, eval_count,
                   eval_count / tps * 1000 AS eval_duration_ms,
                   ttft + CASE WHEN cold THEN 2100.0 ELSE 0 END + eval_count / tps * 1000 AS total_duration_ms,
                   tps AS throughput_tps, CASE WHEN stage = 'warmup' THEN 'length' ELSE 'stop' END AS done_reason,
                   sweep_start + to_seconds(CAST((position * ? + run_number) * 20 + ord * 6 AS BIGINT)) AS started_at,
                   eval_count + 1 AS chunks, cold AS is_cold,
                   CASE WHEN cold THEN 'first call after restart' ELSE 'warm' END AS cold_reason,
                   false AS truncated, NULL AS truncation_reason, {text_chars + 60} AS prompt_chars, num_ctx
            FROM c""", [REPORT_TEXT, runs_per_config])
        if extra_calls:
            con.execute("""
                INSERT INTO llm_calls BY NAME
                SELECT sweep_id, config_id, run_number, 'analysis' AS stage, 0 AS attempt, 1 AS run_attempt,
                       'error' AS status, 'TransientError: stream dropped (RemoteProtocolError)' AS error,
                       'model' AS model, options_json, 'retried prompt' AS prompt, '' AS response,
                       NULL AS ttft_ms, 12.5 AS wall_ms, sweep_start AS started_at, 0 AS chunks, num_ctx
                FROM r ORDER BY k DESC LIMIT ?""", [extra_calls])
        con.execute("""
            INSERT INTO runs BY NAME
            SELECT r.sweep_id, r.config_id, r.run_number, 'ok' AS status, r.run_number = 1 AS cold,
                   CASE WHEN r.run_number = 1 THEN 2300.0 ELSE 0.0 END AS restart_ms, 9.5 AS ingest_ms,
                   max(wall_ms) FILTER (WHERE stage = 'analysis') AS analysis_ms,
                   max(wall_ms) FILTER (WHERE stage = 'report') AS report_ms,
                   sum(wall_ms) FILTER (WHERE status = 'ok') + 40 AS total_ms,
                   min(c.started_at) AS started_at, max(c.started_at) + INTERVAL 15 SECOND AS finished_at,
                   1 AS run_attempt, 'unload' AS restart_strategy, NULL AS error, 'fp-synthetic' AS corpus_fingerprint,
                   35.0 AS record_ms, max(wall_ms) FILTER (WHERE stage = 'warmup') AS warmup_ms, true AS ingest_cached
            FROM r JOIN llm_calls c USING (sweep_id, config_id, run_number)
            GROUP BY ALL""")
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("sweeps", "configs", "runs", "llm_calls")}
        con.execute("CHECKPOINT")
    finally:
        con.close()
    counts["build_s"] = time.perf_counter() - t0
    counts["file_mb"] = path.stat().st_size / 1e6
    return counts


def time_report(warehouse: Path, out: Path, repeats: int) -> dict:
    """``tr111 report --sweep latest`` in a child process, each into a fresh folder (no plot
    cache): wall, CPU, peak RSS (median; RSS by GNU time, see run_child)."""
    runs = [run_child([sys.executable, "-m", "tr111.cli", "report", "--sweep", "latest",
                       "--warehouse", str(warehouse), "--out", str(out / f"r{i}")]) for i in range(repeats)]
    return {"wall_s": median([r["wall_s"] for r in runs]), "cpu_s": median([r["cpu_s"] for r in runs]),
            "rss_mb": median([r["rss_mb"] for r in runs]), "walls": [r["wall_s"] for r in runs]}


def time_queries(warehouse: Path, repeats: int) -> dict:
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        latest = con.execute("SELECT sweep_id FROM sweeps ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        queries = {
            "config_summary WHERE sweep_id = ?": ("SELECT * FROM config_summary WHERE sweep_id = ?", [latest]),
            "config_summary (all sweeps)": ("SELECT * FROM config_summary", []),
            "same aggregate on base tables, filtered first": ("""
                SELECT c.sweep_id, c.config_id, count(*) AS calls, avg(c.throughput_tps), stddev_samp(c.throughput_tps),
                       avg(c.ttft_ms), stddev_samp(c.ttft_ms), sum(c.eval_count)
                FROM llm_calls c JOIN runs r USING (sweep_id, config_id, run_number)
                WHERE c.sweep_id = ? AND r.sweep_id = ? AND c.status = 'ok'
                  AND c.stage IN ('analysis', 'report') AND c.run_attempt = r.run_attempt
                GROUP BY c.sweep_id, c.config_id""", [latest, latest]),
        }
        out = {}
        for name, (sql, params) in queries.items():
            con.execute(sql, params).fetchall()  # warm the buffer cache
            times, n = [], 0
            for _ in range(max(repeats, 5)):
                t0 = time.perf_counter()
                n = len(con.execute(sql, params).fetchall())
                times.append(time.perf_counter() - t0)
            out[name] = (median(times) * 1000, n)
        return out
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warehouse_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--runs-per-config", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the warehouse at this path (kept)")
    parser.add_argument("--reuse", action="store_true", help="with --keep: reuse an existing file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tr111-wh-scale-") as scratch:
        path = args.keep or Path(scratch) / "scale.duckdb"
        if args.reuse and path.exists():
            import duckdb

            with duckdb.connect(str(path), read_only=True) as con:
                counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                          for t in ("sweeps", "configs", "runs", "llm_calls")}
            counts.update(build_s=math.nan, file_mb=path.stat().st_size / 1e6)
        else:
            if path.exists():
                path.unlink()
            counts = build_warehouse(path, calls=args.calls, runs_per_config=args.runs_per_config)
        report = time_report(path, Path(scratch) / "reports", args.repeats)
        queries = time_queries(path, args.repeats)

    print(f"synthetic warehouse: {counts['llm_calls']:,} llm_calls, {counts['runs']:,} runs, "
          f"{counts['configs']:,} configs, {counts['sweeps']:,} sweeps; {counts['file_mb']:.0f} MB, "
          + (f"built in {counts['build_s']:.1f} s" if counts["build_s"] == counts["build_s"] else "reused"))
    print(machine_line())
    print(f"tr111 report --sweep latest: wall {report['wall_s']:.2f} s (median of {args.repeats}: "
          + ", ".join(f"{w:.2f}" for w in report["walls"]) + f"), CPU {report['cpu_s']:.2f} s, "
          f"peak RSS {report['rss_mb']:.0f} MB (target: wall <= {TARGET_REPORT_S:g} s)")
    for name, (ms, n) in queries.items():
        print(f"{name:48s} {ms:9.1f} ms  ({n} rows)")
    print(reproduce_line("bench.warehouse_scale", argv if argv is not None else sys.argv[1:]))
    return 0 if report["wall_s"] <= TARGET_REPORT_S else 1


if __name__ == "__main__":
    sys.exit(main())
