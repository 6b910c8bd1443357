"""Run-time settings: built when a command runs, never at import.

Precedence: explicit overrides (CLI flags) > environment (``TR111_*``,
``OLLAMA_HOST``) > defaults. Validated by pydantic with ``extra="forbid"``
so a typo is an error, not a silently ignored knob.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tr111 import paths
from tr111.errors import ConfigError

DEFAULT_OLLAMA_PORT = 11434

RestartStrategy = Literal["none", "unload", "command", "embedded"]
EngineChoice = Literal["auto", "ollama", "embedded"]
# Read by the embedded engine's own process (tr111.engine.limits), which it inherits: known here
# so that a sweep does not refuse them as typos.
ENGINE_ENV = frozenset({"TR111_ENGINE_WRITE_TIMEOUT_S", "TR111_ENGINE_IDLE_TIMEOUT_S",
                        "TR111_ENGINE_MAX_BODY_BYTES", "TR111_ENGINE_MEMORY_LIMIT_BYTES"})


def ollama_url_from_host(value: str | None) -> str:
    """Turn an ``OLLAMA_HOST`` value into a base URL the way Ollama's client does.

    Accepts ``host``, ``host:port``, ``:port``, ``scheme://host[:port][/path]``;
    the port defaults to 11434 without a scheme, 80/443 with http/https.
    """
    raw = (value or "").strip()
    scheme, sep, hostport = raw.partition("://")
    default_port = DEFAULT_OLLAMA_PORT
    if not sep:
        scheme, hostport = "http", raw
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport, _, path = hostport.partition("/")
    parts = urlsplit(f"//{hostport}")
    try:
        port = parts.port
    except ValueError:
        host, port = "127.0.0.1", default_port
    else:
        host = parts.hostname or "127.0.0.1"
        if port is None:
            port = default_port
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    url = f"{scheme}://{host}:{port}"
    return f"{url}/{path}".rstrip("/") if path else url


class Settings(BaseModel):
    """Everything a sweep or report needs that is not the sweep matrix itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ollama_url: str = Field(default_factory=lambda: ollama_url_from_host(None))
    engine: EngineChoice = "auto"
    # Where outputs go by default (tr111.paths): a checkout keeps warehouse/ and reports/ in
    # the working directory; elsewhere they live under ``home`` (default: the data home).
    home: Path | None = None
    warehouse_path: Path = None  # type: ignore[assignment]  # filled from home (see _locations)
    out_dir: Path = None  # type: ignore[assignment]
    corpus_dir: Path = Field(default_factory=paths.sample_corpus)
    templates_dir: Path = Field(default_factory=paths.templates_dir)
    # HTTP timeouts (seconds): connect, per-read, and a whole-call deadline.
    connect_timeout_s: float = Field(5.0, gt=0, le=600)
    read_timeout_s: float = Field(120.0, gt=0, le=3600)
    call_timeout_s: float = Field(900.0, gt=0, le=86400)
    # Retries of transient faults, with exponential backoff.
    retries: int = Field(3, ge=0, le=20)
    retry_backoff_s: float = Field(1.0, ge=0, le=600)
    restart_strategy: RestartStrategy | None = None  # None: the matrix / engine default
    restart_command: list[str] = Field(default_factory=list)
    restart_timeout_s: float = Field(60.0, gt=0, le=3600)
    regression_threshold_pct: float = Field(5.0, gt=0, le=1000)
    engine_threads: int | None = Field(None, ge=1, le=1024)
    gpu_telemetry: bool = True
    # The timed call in a process of its own (tr111.run.worker); off: in the orchestrator's process.
    measurement_worker: bool = True
    worker_settle_ms: float = Field(0.0, ge=0, le=1000)  # pause before each timed call (bench/timer_in_sweep)
    # auto: with >= 2 CPUs the worker gets a core of its own, the orchestrator the others (tr111.run.worker)
    pin_cpus: Literal["auto", "off"] = "auto"
    # --quiet-host: before each run wait (at most this long) until other processes use less
    # than tr111.run.hostload.CONTENDED_CORE_SHARE of a core.
    quiet_host: bool = False
    quiet_host_timeout_s: float = Field(120.0, gt=0, le=86400)
    # A finished run is a durable shard first (tr111.warehouse.shards); a merge that meets another
    # process's lock leaves it pending, and the sweep's last merge waits at most this long.
    warehouse_lock_wait_s: float = Field(600.0, gt=0, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _locations(cls, values: dict) -> dict:
        if values.get("warehouse_path") is None or values.get("out_dir") is None:
            home = values.get("home")
            defaults = paths.output_defaults(Path(home) if home else None)
            values = {**values, "warehouse_path": values.get("warehouse_path") or defaults.warehouse_path,
                      "out_dir": values.get("out_dir") or defaults.out_dir}
        return values

    @field_validator("ollama_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        if "://" not in value:
            return ollama_url_from_host(value)
        return value.rstrip("/")

    @field_validator("restart_command")
    @classmethod
    def _argv_not_shell(cls, value: list[str]) -> list[str]:
        if value and any(not isinstance(a, str) or a == "" for a in value):
            raise ValueError("restart_command must be a list of non-empty argv strings")
        return value

    @classmethod
    def build(cls, **overrides: object) -> "Settings":
        """Settings from the environment plus explicit overrides (None means unset)."""
        values: dict[str, object] = {}
        env = os.environ
        known = {f"TR111_{name.upper()}" for name in cls.model_fields} | ENGINE_ENV
        unknown = sorted(k for k in env if k.startswith("TR111_") and k not in known)
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]}; known: {', '.join(sorted(known))}")
        if env.get("OLLAMA_HOST"):
            values["ollama_url"] = ollama_url_from_host(env["OLLAMA_HOST"])
        for name in cls.model_fields:
            key = f"TR111_{name.upper()}"
            if key in env:
                values[name] = _parse_env(name, env[key])
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {_first_error(exc)}") from None


def _parse_env(name: str, raw: str) -> object:
    if name == "restart_command":
        import json

        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigError("TR111_RESTART_COMMAND must be a JSON list of argv strings") from None
    return raw


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "value"
    return f"{where}: {err.get('msg', 'invalid')}"
