"""Embedded engine: an Ollama-API-compatible HTTP server on llama-cpp-python.

Start it with ``python -m tr111.engine serve`` (see ``cli.main``) or, from
code, with ``EmbeddedEngine`` (``launcher``), which runs it as a subprocess.
Importing this package loads neither llama_cpp nor the HTTP server.
"""

from .api_models import EMBEDDED_VERSION_MARKER, VERSION, is_embedded_version
from .launcher import EmbeddedEngine, find_free_port

__all__ = ["EMBEDDED_VERSION_MARKER", "VERSION", "EmbeddedEngine", "find_free_port", "is_embedded_version"]
