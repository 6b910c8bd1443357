"""Pick the server a sweep talks to: a running Ollama, or the embedded engine.

``auto`` uses the Ollama at OLLAMA_HOST when /api/version answers and starts
the embedded engine on a free loopback port otherwise. An explicit URL means
that server (no silent fallback).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from tr111.errors import ServerUnavailableError, Tr111Error
from tr111.ollama.client import OllamaClient


@dataclass
class ServerHandle:
    url: str
    kind: str  # "ollama" | "embedded"
    version: str
    model_file: str | None = None
    engine: object | None = None


def probe(url: str, timeout_s: float = 1.5) -> str | None:
    """The server's version, or None when nothing answers there."""
    try:
        with OllamaClient(url, connect_timeout_s=timeout_s, read_timeout_s=timeout_s) as client:
            return client.version()
    except Tr111Error:
        return None


@contextmanager
def open_server(engine: str, url: str, model: str, *, url_explicit: bool = False,
                threads: int | None = None, connect_timeout_s: float = 5.0) -> Iterator[ServerHandle]:
    if engine == "ollama" or (engine == "auto" and url_explicit):
        version = probe(url, connect_timeout_s)
        if version is None:
            raise ServerUnavailableError(f"no Ollama answers at {url} (GET /api/version failed)")
        yield ServerHandle(url=url, kind="ollama", version=version)
        return
    if engine == "auto":
        version = probe(url)
        if version is not None:
            yield ServerHandle(url=url, kind="ollama", version=version)
            return
    from tr111.engine.launcher import EmbeddedEngine

    with EmbeddedEngine(threads=threads) as emb:
        files = emb.model_files
        path = files.get(model) or files.get(f"{model}:latest")
        yield ServerHandle(url=emb.url, kind="embedded", version=emb.version or "",
                           model_file=str(path) if path else None, engine=emb)
