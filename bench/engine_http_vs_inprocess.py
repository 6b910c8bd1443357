"""Embedded engine over HTTP vs llama-cpp-python in-process: decode tokens/s and restart time.

Both sides use the same GGUF, prompt, threads, context, sampling and
num_predict; repetitions alternate between them so background load hits both
alike. Rates:

* server-side: eval_count / eval_duration from the final chunk (llama.cpp counters);
* client-side: streamed tokens after the first / time from first to last token
  chunk, seen by an httpx client, i.e. including HTTP, JSON and socket costs;
* in-process: the client-side definition around ``Llama.generate`` (wall
  clock), and the engine's eval_count / eval_duration definition (llama.cpp's
  t_eval plus sampler time).

Usage: python -m bench.engine_http_vs_inprocess [--reps 5] [--num-predict 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time

import httpx

from tr111.engine import EmbeddedEngine
from tr111.engine.options import DEFAULT_NUM_BATCH, DEFAULT_NUM_CTX, default_thread_count
from tr111.engine.runner import SamplerClock

MODEL = "gemma3:270m"
QUIET_FRACTION = 0.85
DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def http_run(client: httpx.Client, prompt: str, options: dict) -> dict:
    """One streamed /api/generate; client-side timing of token chunks."""
    token_times: list[int] = []
    final: dict = {}
    body = {"model": MODEL, "prompt": prompt, "options": options}
    with client.stream("POST", "/api/generate", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            now = time.perf_counter_ns()
            chunk = json.loads(line)
            if chunk.get("done"):
                final = chunk
            else:
                token_times.append(now)
    client_rate = (len(token_times) - 1) / ((token_times[-1] - token_times[0]) / 1e9)
    server_rate = final["eval_count"] / (final["eval_duration"] / 1e9)
    return {"client_tps": client_rate, "server_tps": server_rate, "eval_count": final["eval_count"],
            "load_ms": final["load_duration"] / 1e6}


def inprocess_run(llm, llama_cpp, prompt: str, sampling: dict, num_predict: int) -> dict:
    """The same generation straight on llama-cpp-python, timed the same two ways."""
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.set_seed(sampling["seed"])
    token_times: list[int] = []
    generator = llm.generate(tokens, top_k=sampling["top_k"], top_p=sampling["top_p"], min_p=0.0,
                             temp=sampling["temperature"], repeat_penalty=1.0, reset=True)
    with SamplerClock(llm) as sampler_clock:
        first_token_perf, first_token_sampling_ns = None, 0
        for token in generator:
            token_times.append(time.perf_counter_ns())
            if first_token_perf is None:
                first_token_perf = llama_cpp.llama_perf_context(llm.ctx)
                first_token_sampling_ns = sampler_clock.total_ns
            is_end = llama_cpp.llama_vocab_is_eog(llm._model.vocab, token)
            llm.detokenize([token])
            if is_end or len(token_times) >= num_predict:
                break
        generator.close()
        sampling_ns = sampler_clock.total_ns - first_token_sampling_ns
    perf_after = llama_cpp.llama_perf_context(llm.ctx)
    wall_rate = (len(token_times) - 1) / ((token_times[-1] - token_times[0]) / 1e9)
    # Same definition as the engine's eval_count / eval_duration.
    eval_ns = (perf_after.t_eval_ms - first_token_perf.t_eval_ms) * 1e6 + sampling_ns
    return {"wall_tps": wall_rate, "counter_tps": len(token_times) / (eval_ns / 1e9),
            "eval_count": len(token_times)}


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_http_vs_inprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--num-predict", type=int, default=128)
    parser.add_argument("--threads", type=int, default=default_thread_count())
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    args = parser.parse_args()

    import llama_cpp

    sampling = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 1234}
    options = {**sampling, "num_predict": args.num_predict, "num_thread": args.threads,
               "num_ctx": DEFAULT_NUM_CTX, "num_batch": DEFAULT_NUM_BATCH}
    print("reproduce:", shlex.join([sys.executable, *sys.argv]))
    print(f"settings: model={MODEL} threads={args.threads} num_ctx={DEFAULT_NUM_CTX} "
          f"num_predict={args.num_predict} reps={args.reps} sampling={sampling}")

    with EmbeddedEngine(threads=args.threads) as engine, httpx.Client(base_url=engine.url, timeout=600) as client:
        model_path = engine.model_files[MODEL]
        load_started = time.perf_counter_ns()
        llm = llama_cpp.Llama(str(model_path), n_ctx=DEFAULT_NUM_CTX, n_batch=DEFAULT_NUM_BATCH,
                              n_ubatch=DEFAULT_NUM_BATCH, n_threads=args.threads,
                              n_threads_batch=args.threads, n_gpu_layers=-1, verbose=False)
        inprocess_load_ms = (time.perf_counter_ns() - load_started) / 1e6
        first = http_run(client, args.prompt, options)  # warm-up: loads the model in the engine
        inprocess_run(llm, llama_cpp, args.prompt, sampling, args.num_predict)  # warm-up
        http_results, inprocess_results = [], []
        for rep in range(args.reps):
            http_results.append(http_run(client, args.prompt, options))
            inprocess_results.append(inprocess_run(llm, llama_cpp, args.prompt, sampling, args.num_predict))
            print(f"  rep {rep + 1}: http client {http_results[-1]['client_tps']:.1f} tok/s, "
                  f"server {http_results[-1]['server_tps']:.1f} | in-process wall "
                  f"{inprocess_results[-1]['wall_tps']:.1f}, counters {inprocess_results[-1]['counter_tps']:.1f}")
        llm.close()
        restarts_ms = [engine.restart() for _ in range(args.restarts)]

    http_client = median([r["client_tps"] for r in http_results])
    http_server = median([r["server_tps"] for r in http_results])
    inproc_wall = median([r["wall_tps"] for r in inprocess_results])
    inproc_perf = median([r["counter_tps"] for r in inprocess_results])
    print("\nresults (medians):")
    print(f"  HTTP streaming, client-side : {http_client:8.2f} tok/s")
    print(f"  HTTP, server eval_count/eval_duration : {http_server:8.2f} tok/s")
    print(f"  in-process wall clock       : {inproc_wall:8.2f} tok/s")
    print(f"  in-process, engine's definition (llama.cpp t_eval + sampler) : {inproc_perf:8.2f} tok/s")
    pairs = list(zip(http_results, inprocess_results, strict=True))
    paired = [h["client_tps"] / i["wall_tps"] for h, i in pairs]
    print(f"  ratio HTTP client / in-process wall : {http_client / inproc_wall:6.3f} "
          f"(median of back-to-back pairs: {median(paired):.3f})")
    # On a shared machine, keep the pairs where neither side was slowed by others:
    # both compute rates within QUIET_FRACTION of the best seen in this session.
    best = max(max(h["server_tps"], i["counter_tps"]) for h, i in pairs)
    quiet = [h["client_tps"] / i["wall_tps"] for h, i in pairs
             if min(h["server_tps"], i["counter_tps"]) >= QUIET_FRACTION * best]
    if quiet:
        print(f"  ratio in quiet pairs (both compute rates >= {QUIET_FRACTION:.0%} of best {best:.1f} tok/s): "
              f"{median(quiet):.3f} over {len(quiet)} of {len(pairs)} pairs")
    else:
        print(f"  no quiet pair (both compute rates >= {QUIET_FRACTION:.0%} of best): machine too busy")
    print(f"  ratio HTTP server / in-process, same definition : {http_server / inproc_perf:6.3f}")
    # Within one run, wall rate / counter rate shares that run's background load,
    # so this ratio of ratios isolates the per-token cost of the HTTP path (but not
    # any slowdown the client process causes to llama.cpp's own compute).
    http_efficiency = median([r["client_tps"] / r["server_tps"] for r in http_results])
    inproc_efficiency = median([r["wall_tps"] / r["counter_tps"] for r in inprocess_results])
    print(f"  wall/counter rate within a run: HTTP {http_efficiency:.3f}, in-process {inproc_efficiency:.3f} "
          f"-> HTTP path keeps {http_efficiency / inproc_efficiency:.3f} of in-process throughput")
    print(f"  model load: engine first request {first['load_ms']:.0f} ms, in-process {inprocess_load_ms:.0f} ms")
    print(f"  engine restart (stop -> /api/version answers), median of {len(restarts_ms)}: "
          f"{median(restarts_ms):.0f} ms (all: {', '.join(f'{ms:.0f}' for ms in restarts_ms)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
