"""tr111: a benchmark lab for local LLM servers speaking the Ollama API.

The core packages (ollama, ingest, run, stats, telemetry, report, cli, engine,
fake_ollama) hold all logic and never import Prefect; ``tr111.flows`` and
``tr111.tasks`` compose them, ``tr111.warehouse`` is the only writer.

In a repository checkout ``flows/``, ``tasks/`` and ``warehouse/`` sit beside
this package (the layout the README describes); an installed wheel has them
inside it (setuptools ``package-dir``). Extending ``__path__`` with the
checkout's root makes ``tr111.flows`` & co. import the same way in both.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "flows").is_dir() and (_checkout / "flows" / "__init__.py").is_file() \
        and (_checkout / "pyproject.toml").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821
del _Path, _checkout
