"""Test doubles for tr111: a fake Ollama server speaking the real wire format.

Used by the test-suite fixtures and by benchmark scripts that need an Ollama with
known, scripted timings and faults. Stdlib only; the core package never needs it.

Names are resolved lazily so that ``python -m tr111.fake_ollama`` does not
import the module twice (runpy warns when the package already imported it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["FAULT_NAMES", "FakeOllama", "FakeTimings"]

if TYPE_CHECKING:
    from tr111.fake_ollama.server import FAULT_NAMES, FakeOllama, FakeTimings


def __getattr__(name: str):
    if name in __all__:
        from tr111.fake_ollama import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
