"""Where tr111 finds the data it ships and where it writes by default.

Shipped data (report and prompt templates, the built-in matrices, the sample
corpus) is package data: inside an installed wheel it sits in ``tr111/templates``,
``tr111/sweeps`` and ``tr111/corpus``; in a repository checkout at the top level.

Output defaults depend on where tr111 runs:

* in a checkout (the working directory is a tr111 repository): today's relative
  paths, ``warehouse/tr111.duckdb`` and ``reports/``;
* anywhere else: the data home, ``$TR111_HOME`` or ``$XDG_DATA_HOME/tr111``
  (``~/.local/share/tr111``), holding ``tr111.duckdb`` and ``reports/``, so that
  every invocation (a nightly deployment too) shares one warehouse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tr111.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
BUILTIN_MATRICES = ("quick", "tr111")


def data_dir(name: str) -> Path:
    """A shipped data folder: inside the installed package, else the checkout's top level."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name


def templates_dir() -> Path:
    return data_dir("templates")


def sample_corpus() -> Path:
    return data_dir("corpus") / "sample"


def matrix_path(name_or_path: str | Path) -> Path:
    """A matrix file: an existing path, or a built-in matrix by name (``quick``, ``tr111``)."""
    path = Path(name_or_path)
    if path.is_file() or str(name_or_path) not in BUILTIN_MATRICES:
        if not path.exists():
            raise ConfigError(f"matrix file not found: {path} (built-in matrices: "
                              f"{', '.join(BUILTIN_MATRICES)})")
        return path
    return data_dir("sweeps") / f"{name_or_path}.yaml"


def is_checkout(folder: Path | None = None) -> bool:
    """Is ``folder`` (default: the working directory) the root of a tr111 repository?"""
    root = folder or Path.cwd()
    try:
        project = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return 'name = "tr111"' in project and (root / "flows" / "sweep.py").is_file()


def data_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "tr111"


@dataclass(frozen=True)
class OutputDefaults:
    warehouse_path: Path
    out_dir: Path


def output_defaults(home: Path | None = None) -> OutputDefaults:
    """Default warehouse file and report folder (see the module docstring)."""
    if home is None and is_checkout():
        return OutputDefaults(Path("warehouse/tr111.duckdb"), Path("reports"))
    base = home or data_home()
    return OutputDefaults(base / "tr111.duckdb", base / "reports")


def sidecar_dir(warehouse_path: Path) -> Path:
    """``<warehouse>.d/`` beside the DuckDB file: sweep leases and pending run shards live there,
    so that neither needs the warehouse's single-writer lock."""
    warehouse_path = Path(warehouse_path)
    return warehouse_path.with_name(warehouse_path.name + ".d")
