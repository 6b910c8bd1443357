"""One small error tree: transient faults are retried, terminal ones fail at once.

Mapped at the boundary (the Ollama client, the engine launcher, config loading)
so that orchestration only ever sees these two kinds.
"""

from __future__ import annotations


class Tr111Error(Exception):
    """Base of every error tr111 raises on purpose.

    ``partial`` optionally carries what was measured before the failure (e.g. a
    CallResult with the text streamed so far) so the failed attempt becomes a row.
    """

    def __init__(self, message: str = "", *, partial: object | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class TransientError(Tr111Error):
    """A fault that may pass: timeouts, connection errors, 5xx, a dropped stream."""


class TerminalError(Tr111Error):
    """A fault that retrying cannot fix: unknown model, bad config, bad input."""


class ConfigError(TerminalError):
    """User input (matrix, settings, CLI flags) is invalid; CLI exit code 2."""


class ModelNotFoundError(TerminalError):
    """The server does not know the requested model (HTTP 404)."""


class EmptyCorpusError(TerminalError):
    """The corpus holds no readable CSV, JSON or Markdown file."""


class ServerUnavailableError(TransientError):
    """The server refused the connection or did not come back in time."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` makes sense (used by Prefect retry conditions)."""
    return isinstance(exc, TransientError)
