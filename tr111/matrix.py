"""The sweep matrix: user YAML validated by pydantic, expanded into configs.

Config ids follow Technical Report 111 (``gpu60_ctx256_temp0p6``,
``baseline_default``) so results line up with the study.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tr111.errors import ConfigError

BASELINE_ID = "baseline_default"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Ollama's native options (api/types.go: Options + Runner) with sane bounds.
NUMERIC_BOUNDS: dict[str, tuple[float, float]] = {
    "num_keep": (-1, 1 << 20), "seed": (-(1 << 63), (1 << 63) - 1),
    "num_predict": (-2, 1 << 20), "top_k": (0, 1 << 20), "top_p": (0, 1), "min_p": (0, 1),
    "typical_p": (0, 1), "repeat_last_n": (-1, 1 << 20), "temperature": (0, 100),
    "repeat_penalty": (0, 100), "presence_penalty": (-100, 100), "frequency_penalty": (-100, 100),
    "mirostat": (0, 2), "mirostat_tau": (0, 100), "mirostat_eta": (0, 100), "tfs_z": (0, 100),
    "num_ctx": (1, 1 << 21), "num_batch": (1, 1 << 20), "num_gpu": (-1, 100000),
    "main_gpu": (0, 1024), "num_thread": (0, 4096),
}
OTHER_OPTIONS = {"stop", "penalize_newline", "numa", "low_vram", "f16_kv", "vocab_only",
                 "use_mmap", "use_mlock", "logits_all"}
NATIVE_OPTIONS = set(NUMERIC_BOUNDS) | OTHER_OPTIONS
INTEGER_OPTIONS = {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat",
                   "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread"}
ID_ABBREVIATIONS = {"num_gpu": "gpu", "num_ctx": "ctx", "temperature": "temp"}
# Options after which Ollama reloads the runner (a cold start).
RUNNER_OPTIONS = ("num_ctx", "num_gpu", "num_thread", "num_batch")

Scalar = Union[bool, int, float, str]
OptionValue = Union[Scalar, list[str]]


def _check_option(name: str, value: object) -> None:
    if name not in NATIVE_OPTIONS:
        raise ValueError(f"unknown Ollama option {name!r}")
    if name in NUMERIC_BOUNDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if name in INTEGER_OPTIONS and int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        low, high = NUMERIC_BOUNDS[name]
        if not low <= value <= high:
            raise ValueError(f"{name}={value!r} is outside [{low:g}, {high:g}]")


class SweepMatrix(BaseModel):
    """The YAML a user writes: model, runs, baseline, grid, fixed options, restart policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=200)
    runs: int = Field(3, ge=1, le=1000)
    baseline: bool = True
    grid: dict[str, list[Scalar]] = Field(default_factory=dict)
    options: dict[str, OptionValue] = Field(default_factory=dict)
    restart: Literal["per_config", "per_run", "never"] = "per_config"
    # Measurement hygiene (recorded with the sweep).
    cache_bust: bool = True
    warmup: bool = False
    # Execution order: shuffled (default; seed drawn and recorded on the sweep unless given) so
    # drift over the sweep cannot masquerade as the outermost grid factor, or grid order.
    order: Literal["shuffled", "grid"] = "shuffled"
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    # Interleaved replicates: run 1 of every config, then run 2, ... (a restart before every run).
    interleave: bool = False
    # Before each run, wait (bounded) until other processes leave the CPUs alone.
    quiet_host: bool = False

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for name, values in grid.items():
            if not values:
                raise ValueError(f"grid.{name} is an empty list")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"grid.{name} repeats a value")
            for value in values:
                _check_option(name, value)
        return grid

    @field_validator("options")
    @classmethod
    def _fixed_options(cls, options: dict[str, OptionValue]) -> dict[str, OptionValue]:
        for name, value in options.items():
            if name == "stop":
                if not isinstance(value, list):
                    raise ValueError("options.stop must be a list of strings")
                continue
            _check_option(name, value)
        return options

    @model_validator(mode="after")
    def _something_to_run(self) -> "SweepMatrix":
        if not self.grid and not self.baseline:
            raise ValueError("the grid is empty and baseline is false: nothing to run")
        overlap = set(self.grid) & set(self.options)
        if overlap:
            raise ValueError(f"options also swept in grid: {sorted(overlap)}")
        ids = [c.config_id for c in expand(self)]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate config ids: {dupes}")
        return self

    def to_json(self) -> str:
        """The matrix as recorded on the sweep. Execution keys at their defaults are left out,
        so a matrix that does not use them keeps the JSON (and the nightly history) it had."""
        data = self.model_dump(mode="json")
        for key, default in EXECUTION_DEFAULTS.items():
            if data.get(key) == default:
                data.pop(key)
        return json.dumps(data, sort_keys=True)


EXECUTION_DEFAULTS = {"order": "shuffled", "seed": None, "interleave": False, "quiet_host": False}


@dataclass(frozen=True)
class Config:
    """One point of the sweep: its id, the swept values and the options sent."""

    config_id: str
    swept: dict[str, Scalar]
    options: dict[str, OptionValue] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.config_id == BASELINE_ID

    def get(self, name: str) -> Scalar | None:
        return self.swept.get(name)


def format_value(value: Scalar) -> str:
    """``0.6`` -> ``0p6``, ``-1`` -> ``m1``: id-safe spelling of a grid value."""
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    text = text.replace("-", "m").replace(".", "p")
    return re.sub(r"[^A-Za-z0-9p]", "", text) or "x"


def config_id_for(swept: dict[str, Scalar]) -> str:
    parts = []
    for name, value in swept.items():
        prefix = ID_ABBREVIATIONS.get(name, name.replace("_", ""))
        parts.append(f"{prefix}{format_value(value)}")
    return "_".join(parts)


def expand(matrix: SweepMatrix) -> list[Config]:
    """Baseline first, then the full cross product in the grid's key order."""
    configs: list[Config] = []
    if matrix.baseline:
        configs.append(Config(BASELINE_ID, {}, dict(matrix.options)))
    names = list(matrix.grid)
    for combo in itertools.product(*(matrix.grid[n] for n in names)) if names else ():
        swept = dict(zip(names, combo))
        configs.append(Config(config_id_for(swept), swept, {**matrix.options, **swept}))
    return configs


def load_matrix(path: str | Path, *, model: str | None = None, runs: int | None = None) -> SweepMatrix:
    """Read and validate a matrix file (a path, or a built-in name: ``quick``, ``tr111``);
    every problem is one ConfigError line."""
    from tr111.paths import matrix_path

    path = matrix_path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"matrix file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read matrix file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"matrix file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"matrix file {path} must be a YAML mapping")
    if model is not None:
        raw["model"] = model
    if runs is not None:
        raw["runs"] = runs
    return parse_matrix(raw, source=str(path))


def parse_matrix(raw: dict, *, source: str = "matrix") -> SweepMatrix:
    try:
        return SweepMatrix.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "matrix"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        raise ConfigError(f"{source}: {where}: {msg}") from None


def validate_id(value: str, what: str = "id") -> str:
    """Ids become folder names: allow only a safe alphabet, never '..' or '/'."""
    if not ID_PATTERN.match(value) or ".." in value:
        raise ConfigError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.' (max 128)")
    return value
