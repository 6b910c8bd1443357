"""How the engine protects itself: timeouts, body and name limits, the memory check.

Every limit has a default, an environment variable and a
``tr111 engine serve`` flag; a flag wins over the variable:

===========================  ======================================  =========
setting                      meaning                                 default
===========================  ======================================  =========
TR111_ENGINE_WRITE_TIMEOUT_S a client that accepts no bytes for this  30 s
  / --write-timeout          long is dropped, its generation stopped
TR111_ENGINE_IDLE_TIMEOUT_S  a keep-alive connection with no request  60 s
  / --idle-timeout           (or a body that stalls) is closed
TR111_ENGINE_MAX_BODY_BYTES  larger request bodies get 413 unread     16 MiB
  / --max-body-bytes
TR111_ENGINE_MEMORY_LIMIT_   memory a new KV cache may take; unset:   MemAvailable
BYTES / --memory-limit-bytes MemAvailable from /proc/meminfo
===========================  ======================================  =========
"""

from __future__ import annotations

import math
import os
import re
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tr111.errors import BadRequest, ConfigError, InsufficientMemory

from .gguf import GGUFInfo

try:  # POSIX only; without them StallGuard relies on the socket timeout alone
    import fcntl
    import termios
except ImportError:  # pragma: no cover - Windows
    fcntl = termios = None  # type: ignore[assignment]

WRITE_TIMEOUT_ENV = "TR111_ENGINE_WRITE_TIMEOUT_S"
IDLE_TIMEOUT_ENV = "TR111_ENGINE_IDLE_TIMEOUT_S"
MAX_BODY_ENV = "TR111_ENGINE_MAX_BODY_BYTES"
MEMORY_LIMIT_ENV = "TR111_ENGINE_MEMORY_LIMIT_BYTES"

DEFAULT_WRITE_TIMEOUT_S = 30.0
DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

# After a 413 the rest of the body is read and thrown away (bounded), so that
# the client, still sending, sees the answer instead of a connection reset.
_DRAIN_MAX_BYTES = 128 * 1024 * 1024
_DRAIN_MAX_S = 5.0
_DRAIN_CHUNK = 64 * 1024

MODEL_NAME_MAX = 256
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


@dataclass(frozen=True)
class EngineLimits:
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    memory_limit_bytes: int | None = None  # None: MemAvailable at load time

    @classmethod
    def build(cls, environ: Mapping[str, str] | None = None, **flags: float | int | None) -> EngineLimits:
        """Defaults, overridden by the environment, overridden by non-None ``flags``."""
        env = os.environ if environ is None else environ
        values = {
            "write_timeout_s": _env_number(env, WRITE_TIMEOUT_ENV, float, DEFAULT_WRITE_TIMEOUT_S),
            "idle_timeout_s": _env_number(env, IDLE_TIMEOUT_ENV, float, DEFAULT_IDLE_TIMEOUT_S),
            "max_body_bytes": _env_number(env, MAX_BODY_ENV, int, DEFAULT_MAX_BODY_BYTES),
            "memory_limit_bytes": _env_number(env, MEMORY_LIMIT_ENV, int, None),
        }
        values.update({key: value for key, value in flags.items() if value is not None})
        for key, value in values.items():
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ConfigError(f"engine limit {key} must be a positive number, got {value!r}")
        return cls(**values)


def _env_number(env: Mapping[str, str], name: str, kind: type, default):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(float(raw)) if kind is int else kind(raw)
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


# -- request bodies ------------------------------------------------------------------


def content_length(raw: str | None) -> int | None:
    """The Content-Length header as a non-negative int; 400 when it is not one."""
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or len(text) > 18:
        raise BadRequest(f"invalid Content-Length header {text[:32]!r}")
    return int(text)


def drain(rfile, length: int | None) -> None:
    """Read and discard up to ``length`` body bytes, bounded in bytes and time."""
    remaining = min(length if length is not None else _DRAIN_MAX_BYTES, _DRAIN_MAX_BYTES)
    deadline = time.monotonic() + _DRAIN_MAX_S
    try:
        while remaining > 0 and time.monotonic() < deadline:
            chunk = rfile.read1(min(remaining, _DRAIN_CHUNK)) if hasattr(rfile, "read1") \
                else rfile.read(min(remaining, _DRAIN_CHUNK))
            if not chunk:
                return
            remaining -= len(chunk)
    except (OSError, ValueError):
        return


# -- model names ---------------------------------------------------------------------


def check_model_name(name: str) -> None:
    """Ollama's name rules, roughly; the name is never echoed (it may be huge)."""
    if len(name) > MODEL_NAME_MAX or not _MODEL_NAME.fullmatch(name):
        raise BadRequest(
            f"invalid model name ({len(name)} characters): a name starts with a letter or digit, "
            f"uses only letters, digits and . _ : / -, and has at most {MODEL_NAME_MAX} characters")


# -- memory ----------------------------------------------------------------------------


def available_memory_bytes(limit_override: int | None = None) -> int | None:
    """The override, else MemAvailable from /proc/meminfo; None when unknown."""
    if limit_override is not None:
        return limit_override
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gib(count: float) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**29 else f"{count / 2**20:.1f} MiB"


def required_bytes(info: GGUFInfo, n_ctx: int, use_mmap: bool, file_size: int) -> int:
    """Anonymous memory a load needs: the f16 KV cache, plus the weights without mmap.

    With mmap the weights are page cache (counted in MemAvailable, reclaimable),
    so only the KV cache is compared; compute buffers are not counted.
    """
    return info.kv_cache_bytes(n_ctx) + (0 if use_mmap else file_size)


def check_memory(info: GGUFInfo, n_ctx: int, use_mmap: bool, file_size: int,
                 limit_override: int | None, reclaimable_bytes: int = 0) -> None:
    """Raise InsufficientMemory (HTTP 500, Ollama's message) when the load cannot fit.

    ``reclaimable_bytes``: what unloading the current model frees (it goes first).
    """
    needed = required_bytes(info, n_ctx, use_mmap, file_size)
    available = available_memory_bytes(limit_override)
    if available is None:
        return
    if limit_override is None:
        available += reclaimable_bytes
    if needed > available:
        raise InsufficientMemory(
            f"model requires more system memory ({gib(needed)}) than is available ({gib(available)}): "
            f"num_ctx {n_ctx} needs a {gib(info.kv_cache_bytes(n_ctx))} KV cache; use a smaller num_ctx")


# -- stalled readers -----------------------------------------------------------------------


class StallGuard:
    """Notices a peer that has stopped reading, before our send buffer fills.

    Loopback send buffers hold megabytes (thousands of token lines), so a
    blocked ``sendall`` alone would take minutes to notice a client that never
    reads. Instead, after each write the unsent byte count (SIOCOUTQ) is read:
    when bytes wait and none have left for ``timeout_s``, the client is gone.
    """

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._written = 0
        self._delivered = 0
        self._progress_at = time.monotonic()
        self._supported = fcntl is not None

    def wrote(self, count: int) -> bool:
        """Record ``count`` bytes written; False when the peer has stalled too long."""
        self._written += count
        if not self._supported:
            return True
        try:
            buffer = fcntl.ioctl(self._sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            unsent = struct.unpack("i", buffer)[0]
        except (OSError, AttributeError, ValueError):
            self._supported = False
            return True
        now = time.monotonic()
        delivered = self._written - unsent
        if unsent == 0 or delivered > self._delivered:
            self._delivered = delivered
            self._progress_at = now
            return True
        return now - self._progress_at < self._timeout_s
