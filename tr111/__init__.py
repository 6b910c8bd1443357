"""tr111: a benchmark lab for local LLM servers speaking the Ollama API.

The core package holds all logic (client, metrics, ingest, statistics, engine)
and never imports Prefect; ``flows/`` and ``tasks/`` compose it.
"""

__version__ = "0.1.0"
