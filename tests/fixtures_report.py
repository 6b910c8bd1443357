"""Fixture warehouses for the report tests, written through warehouse.writer.

``build_sweep`` writes one sweep of a 1 + 2 x 2 matrix with planted effects:

* ``num_ctx`` has a real effect: 1024 is CTX_EFFECT (-8%) slower than 512 in
  throughput, and its warm TTFT is TTFT_EFFECT (+25%) higher;
* ``temperature`` has no effect on anything;
* the first call of every config (run 1, analysis) is cold: it paid a model
  load (load_duration ~1.2 s, TTFT +1.5 s), as after a restart;
* report responses are hand-written markdown whose numbers come from the data
  summary in the analysis prompt, except for POOR_CONFIG, whose reports are
  short and repetitive (its quality must be called out);
* ``slow`` makes one config SLOW_FACTOR slower (throughput) than it would be,
  ``scale`` any config faster or slower, for the nightly-regression tests;
* ``stages=True`` gives the two calls different, known timings, as a real server
  has them (the default keeps the original rows, so the golden report's TR111
  columns stay comparable): the analysis call processes STAGE_PROMPT_TOKENS
  ["analysis"] prompt tokens, the report call far fewer, at STAGE_PREFILL_TPS
  (num_ctx 1024: PREFILL_EFFECT slower), decode runs at BASE_TPS x
  STAGE_DECODE_FACTOR, and TTFT = load + prompt tokens / prefill rate +
  OVERHEAD_MS (the client's own part);
* ``truncate``: configs whose analysis prompt the server truncated to
  TRUNCATED_TOKENS tokens (flagged on the rows; with ``stages`` their analysis
  TTFT is short because of it: the trap of issue 10 item 7).

Noise is seeded and small (run-to-run sd ~0.8% of throughput, ~2% of TTFT).
``build_large`` fills a warehouse with a million calls in SQL for the
performance test.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tr111.report.scoring import SCORER_VERSION
from tr111.warehouse import connect, writer

MATRIX = {"baseline": True, "cache_bust": True, "grid": {"num_ctx": [512, 1024], "temperature": [0.6, 0.8]},
          "model": "gemma3:latest", "options": {"num_predict": 64}, "restart": "per_config", "runs": 4,
          "warmup": False}
CONFIGS = ["baseline_default", "ctx512_temp0p6", "ctx512_temp0p8", "ctx1024_temp0p6", "ctx1024_temp0p8"]
BASE_TPS, BASE_TTFT = 100.0, 200.0
CTX_EFFECT, TTFT_EFFECT = -0.08, 0.25
POOR_CONFIG = "ctx1024_temp0p8"
SLOW_FACTOR = 0.90
COLD_EXTRA_MS, COLD_LOAD_MS = 1500.0, 1200.0
STAGE_PROMPT_TOKENS = {"analysis": 450, "report": 120}
STAGE_PREFILL_TPS = {"analysis": 1500.0, "report": 1200.0}  # prompt eval rate at num_ctx 512 / default
STAGE_DECODE_FACTOR = {"analysis": 0.9, "report": 1.0}  # decode is slower over the longer context
PREFILL_EFFECT = -0.20  # num_ctx 1024: prefill rate 20% lower, so prefill time and TTFT ~25% longer
OVERHEAD_MS, WARM_LOAD_MS = 6.0, 2.5
TRUNCATED_TOKENS = 150


def expected_warm_ttft(stage: str, ctx: int | None = None, tokens: int | None = None) -> float:
    """The planted warm TTFT of a stage (``stages=True``), in ms, without noise."""
    rate = STAGE_PREFILL_TPS[stage] * (1 + PREFILL_EFFECT if ctx == 1024 else 1.0)
    return WARM_LOAD_MS + (tokens or STAGE_PROMPT_TOKENS[stage]) / rate * 1000.0 + OVERHEAD_MS
START = datetime(2025, 11, 1, 2, 0, tzinfo=UTC)

DATA_SUMMARY = """Benchmark data summary: 12 files ingested (csv 5, json 4, markdown 3).
gemma3:latest num_gpu 60 num_ctx 256: tokens_per_second 114.51, ttft_ms 1346.82, runs 3.
gemma3:latest num_gpu 80 num_ctx 512: tokens_per_second 113.99, ttft_ms 1319.34, runs 3.
gemma3:latest num_gpu 120 num_ctx 1024: tokens_per_second 114.98, ttft_ms 1310.19, runs 3.
Load duration mean 412.5 ms; eval duration mean 5210.8 ms; total tokens 7157."""

GOOD_REPORT = """# Executive Summary
The benchmark covers 12 files. Throughput sits between 113.99 and 114.98 tokens per second, while
time to first token ranges from 1310.19 to 1346.82 ms.

# Methodology
We ingested csv, json and markdown files and compared the gemma3:latest runs per configuration,
3 runs each, reading tokens per second, TTFT, load and eval durations.

# Results
| Config | Tokens/s | TTFT (ms) |
|---|---|---|
| num_gpu 60, num_ctx 256 | 114.51 | 1346.82 |
| num_gpu 80, num_ctx 512 | 113.99 | 1319.34 |
| num_gpu 120, num_ctx 1024 | 114.98 | 1310.19 |

# Analysis
- Throughput barely moves with the configuration; the spread is under one token per second.
- Load duration (412.5 ms mean) explains a large share of the first-token latency.
- Eval duration averages 5210.8 ms for 7157 tokens in total.

# Recommendations
- Prefer num_ctx 1024 with num_gpu 120 for the best throughput observed, 114.98 tokens per second.
- Warm the model before measuring latency, since loading dominates cold starts.

# Conclusion
The configurations perform alike on throughput; latency depends on model loading more than on the
parameters tested, and further runs would narrow the confidence intervals.
"""

POOR_REPORT = "Report. " + "The model is fast. " * 30


def _staged(stage: str, ctx: int | None, cold: bool, truncated: bool, rng: random.Random) -> dict:
    """Per-stage timings of one call (``stages=True``): TTFT = load + prefill + client overhead."""
    tokens = TRUNCATED_TOKENS if truncated else STAGE_PROMPT_TOKENS[stage]
    rate = STAGE_PREFILL_TPS[stage] * (1 + PREFILL_EFFECT if ctx == 1024 else 1.0) * (1 + rng.gauss(0, 0.01))
    prefill_ms = tokens / rate * 1000.0
    load = COLD_LOAD_MS * (1 + rng.gauss(0, 0.01)) if cold else WARM_LOAD_MS + rng.uniform(-0.5, 0.5)
    overhead = OVERHEAD_MS + rng.gauss(0, 0.3)
    return {"prompt_eval_count": tokens, "prompt_eval_duration_ms": prefill_ms, "load_duration_ms": load,
            "ttft_ms": load + prefill_ms + overhead}


def _calls_for(sweep_id: str, config_id: str, run: int, rng: random.Random, *, scale: dict[str, float],
               when: datetime, stages: bool = False, truncate: tuple = ()) -> list[dict]:
    ctx = 1024 if "ctx1024" in config_id else 512 if "ctx512" in config_id else None
    tps_mean = BASE_TPS * (1 + CTX_EFFECT if ctx == 1024 else 1.0)
    ttft_mean = BASE_TTFT * (1 + TTFT_EFFECT if ctx == 1024 else 1.0)
    tps_mean *= scale.get(config_id, 1.0)
    run_tps = rng.gauss(tps_mean, tps_mean * 0.008)  # run-level noise
    options = {"num_predict": 64}
    if ctx:
        options.update(num_ctx=ctx, temperature=0.6 if "temp0p6" in config_id else 0.8)
    out = []
    for i, stage in enumerate(("analysis", "report")):
        cold = run == 1 and i == 0
        tps = run_tps * (1 + rng.gauss(0, 0.004))
        ttft = ttft_mean * (1 + rng.gauss(0, 0.02)) + (COLD_EXTRA_MS if cold else 0.0)
        eval_count = 64 + rng.randint(0, 8)
        eval_ms = eval_count / tps * 1000.0
        load = COLD_LOAD_MS * (1 + rng.gauss(0, 0.01)) if cold else 2.0 + rng.random()
        nonce = f"Session {sweep_id}/{config_id}/run{run}.\n"
        prompt = nonce + ("Analyse this data.\n" + DATA_SUMMARY if stage == "analysis"
                          else "Write the report.\n(analysis text)")
        response = ("The data shows throughput near 114.51 tokens per second." if stage == "analysis"
                    else POOR_REPORT if config_id == POOR_CONFIG else GOOD_REPORT)
        truncated = stage == "analysis" and config_id in truncate
        timing = {"prompt_eval_count": TRUNCATED_TOKENS if truncated else 300, "prompt_eval_duration_ms": 50.0}
        if stages:
            tps *= STAGE_DECODE_FACTOR[stage]
            eval_ms = eval_count / tps * 1000.0
            timing = _staged(stage, ctx, cold, truncated, rng)
            ttft, load = timing["ttft_ms"], timing["load_duration_ms"]
        out.append({
            "sweep_id": sweep_id, "config_id": config_id, "run_number": run, "stage": stage,
            "attempt": 1, "run_attempt": 1, "status": "ok", "model": MATRIX["model"],
            "options_json": json.dumps(options, sort_keys=True), "prompt": prompt, "response": response,
            "ttft_ms": ttft, "wall_ms": ttft + eval_ms, "load_duration_ms": load, **timing,
            "eval_count": eval_count,
            "eval_duration_ms": eval_ms, "total_duration_ms": ttft + eval_ms, "throughput_tps": tps,
            "done_reason": "stop", "started_at": when + timedelta(seconds=i), "chunks": eval_count,
            "is_cold": cold, "cold_reason": "first call after restart" if cold else "warm",
            "truncated": truncated, "num_ctx": ctx or 4096,
            "truncation_reason": f"prompt exceeds num_ctx={ctx}: kept {TRUNCATED_TOKENS} tokens" if truncated
            else None,
        })
    return out


def build_sweep(path: Path, sweep_id: str, *, seed: int = 0, slow: str | None = None,
                scale: dict[str, float] | None = None, started_at: datetime = START,
                status: str = "completed", runs: int = 4, failed_attempt: bool = False,
                stages: bool = False, truncate: tuple[str, ...] = ()) -> None:
    """One sweep of the planted-effects matrix (see the module docstring).

    ``slow``: a config whose throughput is SLOW_FACTOR of normal; ``scale``: any
    config -> throughput factor; ``stages``: per-stage timings; ``truncate``:
    configs whose analysis prompts were truncated.
    """
    rng = random.Random(seed)
    scale = dict(scale or {})
    if slow:
        scale[slow] = SLOW_FACTOR
    matrix = dict(MATRIX, runs=runs)
    env = {"host": "fixture-host", "os": "Linux-test", "python": "3.11.7", "cpu": "Test CPU",
           "cpu_count": 2, "memory_gib": 8.0, "cpu_pinning": "on: worker on CPU 1, this process on CPU 0",
           "gpus": [{"index": 0, "name": "NVIDIA Test GPU", "driver": "550.00", "memory_total_mb": 12288}],
           "show": {"details": {"family": "gemma3", "format": "gguf", "parameter_size": "4.3B",
                                "quantization_level": "Q4_K_M"}}}
    configs = []
    for i, config_id in enumerate(CONFIGS):
        options = {"num_predict": 64}
        if config_id != "baseline_default":
            options.update(num_ctx=1024 if "ctx1024" in config_id else 512,
                           temperature=0.6 if "temp0p6" in config_id else 0.8)
        configs.append({"sweep_id": sweep_id, "config_id": config_id, "num_gpu": None,
                        "num_ctx": options.get("num_ctx"), "temperature": options.get("temperature"),
                        "options_json": json.dumps(options, sort_keys=True),
                        "is_baseline": config_id == "baseline_default", "position": i,
                        "ps_json": json.dumps({"digest": "f" * 64, "size_vram": 3_000_000_000}),
                        "size_vram": 3_000_000_000, "context_length": options.get("num_ctx", 4096)})
    writer.start_sweep(path, {
        "sweep_id": sweep_id, "started_at": started_at, "status": "running", "model": matrix["model"],
        "ollama_url": "http://127.0.0.1:11434", "server_version": "0.12.0", "matrix_json": json.dumps(
            matrix, sort_keys=True), "host": "fixture-host", "engine": "ollama", "tr111_version": "0.1.0",
        "environment_json": json.dumps(env), "cache_bust": True, "warmup": False,
        "corpus_dir": "corpus/sample"}, configs)
    when = started_at
    all_runs, all_calls = [], []
    for config_id in CONFIGS:
        for run in range(1, runs + 1):
            when += timedelta(seconds=10)
            calls = _calls_for(sweep_id, config_id, run, rng, scale=scale, when=when, stages=stages,
                               truncate=tuple(truncate))
            all_calls += calls
            all_runs.append({
                "sweep_id": sweep_id, "config_id": config_id, "run_number": run, "status": "ok",
                "cold": run == 1, "restart_ms": 100.0 if run == 1 else 0.0, "ingest_ms": 5.0,
                "analysis_ms": calls[0]["wall_ms"], "report_ms": calls[1]["wall_ms"],
                "total_ms": calls[0]["wall_ms"] + calls[1]["wall_ms"] + 10.0, "started_at": when,
                "finished_at": when + timedelta(seconds=5), "run_attempt": 1,
                "restart_strategy": "unload" if run == 1 else "none"})
    # what record_run writes per run, in one transaction for the whole sweep (fast fixtures)
    writer._transaction(Path(path), lambda con: (writer._insert(con, "llm_calls", all_calls, replace=True),
                                                 writer._insert(con, "runs", all_runs, replace=True)))
    if failed_attempt:
        writer.record_call_attempt(path, {
            "sweep_id": sweep_id, "config_id": CONFIGS[1], "run_number": 1, "stage": "analysis",
            "attempt": 0, "run_attempt": 1, "status": "error", "error": "TransientError: HTTP 500 | boom",
            "ttft_ms": 99999.0, "throughput_tps": 1.0, "started_at": started_at})
    writer.finish_sweep(path, sweep_id, status)


def build_large(path: Path, *, calls: int = 1_000_000, sweeps: int = 500, configs: int = 19,
                score: bool = True) -> str:
    """A warehouse with ``calls`` llm_calls rows over ``sweeps`` nightly sweeps of one 3x3x2 matrix
    (+ baseline), built in SQL; returns the latest sweep id. Quality scores are filled for every
    report call (as earlier nightly reports would have stored them) when ``score``.
    """
    grid = {"num_gpu": [60, 80, 120], "num_ctx": [256, 512, 1024], "temperature": [0.6, 0.8]}
    matrix = json.dumps({"baseline": True, "cache_bust": True, "grid": grid, "model": "gemma3:latest",
                         "options": {}, "restart": "per_config", "runs": 0, "warmup": False}, sort_keys=True)
    ids = ["baseline_default"] + [f"gpu{g}_ctx{c}_temp{str(t).replace('.', 'p')}"
                                  for g in grid["num_gpu"] for c in grid["num_ctx"] for t in grid["temperature"]]
    ids = ids[:configs]
    runs = max(1, calls // (sweeps * len(ids) * 2))
    with connect(path) as con:
        con.execute("CREATE TEMP TABLE cfg (pos INTEGER, config_id VARCHAR, num_gpu INTEGER, num_ctx INTEGER,"
                    " temperature DOUBLE)")
        for pos, cid in enumerate(ids):
            if cid == "baseline_default":
                con.execute("INSERT INTO cfg VALUES (?, ?, NULL, NULL, NULL)", [pos, cid])
            else:
                g, c, t = cid.split("_")
                con.execute("INSERT INTO cfg VALUES (?, ?, ?, ?, ?)",
                            [pos, cid, int(g[3:]), int(c[3:]), float(t[4:].replace("p", "."))])
        con.execute("""INSERT INTO sweeps (sweep_id, started_at, finished_at, status, model, ollama_url,
                       server_version, matrix_json, host, engine, environment_json)
                       SELECT 'night-' || lpad(s::VARCHAR, 4, '0'), TIMESTAMPTZ '2025-01-01 02:00:00+00'
                              + to_days(s::INTEGER), TIMESTAMPTZ '2025-01-01 04:00:00+00' + to_days(s::INTEGER),
                              'completed', 'gemma3:latest', 'http://127.0.0.1:11434', '0.12.0', ?, 'perf',
                              'ollama', '{}'
                       FROM range(?) t(s)""", [matrix, sweeps])
        con.execute("""INSERT INTO configs (sweep_id, config_id, num_gpu, num_ctx, temperature, options_json,
                       is_baseline, position)
                       SELECT w.sweep_id, c.config_id, c.num_gpu, c.num_ctx, c.temperature,
                              json_object('num_gpu', c.num_gpu, 'num_ctx', c.num_ctx,
                                          'temperature', c.temperature)::VARCHAR,
                              c.config_id = 'baseline_default', c.pos
                       FROM sweeps w, cfg c""")
        con.execute("""INSERT INTO runs (sweep_id, config_id, run_number, status, cold, total_ms, started_at,
                       run_attempt)
                       SELECT w.sweep_id, c.config_id, r + 1, 'ok', r = 0, 1000.0,
                              w.started_at + to_seconds((c.pos * ? + r)::BIGINT), 1
                       FROM sweeps w, cfg c, range(?) t(r)""", [runs, runs])
        con.execute("""INSERT INTO llm_calls (sweep_id, config_id, run_number, stage, attempt, run_attempt,
                       status, model, prompt, response, ttft_ms, wall_ms, load_duration_ms, eval_count,
                       eval_duration_ms, throughput_tps, started_at, is_cold, cold_reason, prompt_eval_count,
                       prompt_eval_duration_ms)
                       SELECT r.sweep_id, r.config_id, r.run_number, st.stage, 1, 1, 'ok', 'gemma3:latest',
                              'Analyse: tokens_per_second 114.5', '# Summary' || chr(10) || 'Throughput 114.5.',
                              200 + random() * 20 + CASE WHEN r.run_number = 1 AND st.stage = 'analysis'
                                                         THEN 1500 ELSE 0 END,
                              900.0, CASE WHEN r.run_number = 1 AND st.stage = 'analysis' THEN 1200 ELSE 2 END,
                              64, 640.0, 100 + random() * 2 - coalesce(c.num_ctx, 0) / 1024.0,
                              r.started_at, r.run_number = 1 AND st.stage = 'analysis', 'fixture',
                              CASE st.stage WHEN 'analysis' THEN 450 ELSE 120 END,
                              CASE st.stage WHEN 'analysis' THEN 150.0 ELSE 60.0 END * (1 + random() * 0.02)
                       FROM runs r JOIN cfg c USING (config_id),
                            (VALUES ('analysis'), ('report')) st(stage)""")
        if score:
            con.execute("""INSERT INTO quality_scores
                           SELECT sweep_id, config_id, run_number, attempt, 'report', run_attempt, 0.5, 0.7,
                                  0.8, 0.05, 150, 0.6, NULL, 0, '[]', ?, now()
                           FROM llm_calls WHERE stage = 'report'""", [SCORER_VERSION])
        last = con.execute("SELECT max(sweep_id) FROM sweeps").fetchone()[0]
    return last
