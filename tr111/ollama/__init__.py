"""The Ollama API as tr111 sees it: a streaming client that stamps perf_counter_ns, and the
per-call metrics it parses (client.py, metrics.py)."""
