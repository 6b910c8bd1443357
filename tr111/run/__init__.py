"""Stage 2, the run: plan, restart, prompts, the timed calls, cold/warm and truncation
decisions, and the sweep context that owns clients, samplers and engines."""
