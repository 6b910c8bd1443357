"""Every error class tr111 raises on purpose, in one tree.

Transient faults are retried (Prefect's retry condition asks ``is_transient``),
terminal ones fail at once. They are mapped at the boundary (the Ollama client
maps httpx's tree, the engine launcher, config loading, the warehouse
connection) so that orchestration only ever sees these kinds::

    Tr111Error
    ├── TransientError                 retried: timeouts, connection errors, 5xx, a dropped stream
    │   ├── ServerUnavailableError     refused connection, or not back in time
    │   │   └── SweepIncompleteError   gone mid-sweep for good: the unfinished runs are named
    │   ├── ImplausibleMetricsError    final-chunk metrics of the wrong type, out of range, or impossible
    │   └── WarehouseLockedError       another process held the warehouse past the wait (it is named)
    ├── TerminalError                  retrying cannot help
    │   ├── ConfigError                bad matrix, setting, flag or path (CLI exit code 2)
    │   │   └── SweepLeasedError       the sweep id is leased by a live process (it is named)
    │   ├── StorageError               disk full, read-only or corrupt file: the cause and the path
    │   ├── ModelNotFoundError         the server does not know the model (HTTP 404)
    │   ├── EmptyCorpusError           no readable CSV, JSON or Markdown file
    │   └── ModelLoadError             the embedded engine cannot load a GGUF file
    └── EngineRequestError             inside the embedded engine's HTTP layer only
        ├── BadRequest                 answered 400 with Ollama's {"error": ...} body
        │   ├── OptionError            an option of the wrong type or value (also a ValueError)
        │   └── PayloadTooLarge        a request body over the engine's limit: 413, body left unread
        ├── InsufficientMemory         the KV cache for num_ctx would not fit in memory: 500
        └── ClientGone                 the HTTP client went away or stopped reading: stop generating

    KeyboardInterrupt
    └── Interrupted                    SIGINT or SIGTERM ended the sweep (exit 128 + signal)
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

    def __reduce__(self):  # pickled across the measurement worker's pipe, partial included
        return (_rebuild, (type(self), str(self), self.partial))


def _rebuild(cls: type, message: str, partial: object | None) -> Tr111Error:
    return cls(message, partial=partial)


class TransientError(Tr111Error):
    """A fault that may pass: timeouts, connection errors, 5xx, a dropped stream."""


class ServerUnavailableError(TransientError):
    """The server refused the connection or did not come back in time."""


class SweepIncompleteError(ServerUnavailableError):
    """The server went away mid-sweep and did not come back: unfinished runs are named."""


class ImplausibleMetricsError(TransientError):
    """The server's final-chunk metrics fail validation (type, range, or the client's clock)."""


class WarehouseLockedError(TransientError):
    """Another process held the DuckDB file's lock past the wait; ``holder`` names it."""

    def __init__(self, message: str = "", *, holder: str | None = None,
                 partial: object | None = None) -> None:
        super().__init__(message, partial=partial)
        self.holder = holder


class TerminalError(Tr111Error):
    """A fault that retrying cannot fix: unknown model, bad config, bad input."""


class ConfigError(TerminalError):
    """User input (matrix, settings, CLI flags, paths) is invalid; CLI exit code 2."""


class SweepLeasedError(ConfigError):
    """A second process asked for a sweep id whose lease a live process holds."""


class StorageError(TerminalError):
    """The file system refused a write (disk full, read-only) or a file is corrupt."""


class ModelNotFoundError(TerminalError):
    """The server does not know the requested model (HTTP 404)."""


class EmptyCorpusError(TerminalError):
    """The corpus holds no readable CSV, JSON or Markdown file."""


class ModelLoadError(TerminalError):
    """llama.cpp could not load the file (bad GGUF, not enough memory)."""


class EngineRequestError(Tr111Error):
    """Signals inside the embedded engine's request handling; they never leave its process."""


class BadRequest(EngineRequestError):
    """400 with Ollama's ``{"error": ...}`` body."""

    status = 400


class OptionError(BadRequest, ValueError):
    """An option has the wrong type or value; the HTTP layer answers 400 like Ollama."""


class PayloadTooLarge(BadRequest):
    """The request body is over the engine's limit: 413, and the body is not read into memory."""

    status = 413


class InsufficientMemory(EngineRequestError):
    """Loading with this num_ctx would need more memory than is available: 500, as Ollama answers."""

    status = 500


class ClientGone(EngineRequestError):
    """The HTTP client went away, or stopped reading for the write timeout; generation must stop."""


class Interrupted(KeyboardInterrupt):
    """A signal ended the command. A BaseException like KeyboardInterrupt, so that no
    ``except Exception`` on the way (Prefect's, httpx's) can swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` makes sense (used by Prefect retry conditions)."""
    return isinstance(exc, TransientError)
