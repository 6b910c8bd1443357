"""Shared fixtures: a real fake-Ollama HTTP server, a temp warehouse, a Prefect test harness."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Prefect reads its settings at import: point PREFECT_HOME at a temp folder before any import.
_PREFECT_HOME = tempfile.mkdtemp(prefix="tr111-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("OLLAMA_HOST", None)

import prefect_db  # noqa: E402  (tests/ is on sys.path: rootdir-style conftest import)


@pytest.fixture
def fake_ollama():
    from tr111.fake_ollama.server import FakeOllama, FakeTimings

    with FakeOllama(FakeTimings(load_ms=20, token_ms=1.0, tokens=12)) as fake:
        yield fake


@pytest.fixture
def warehouse_path(tmp_path) -> Path:
    return tmp_path / "wh.duckdb"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A small generated corpus (the shipped sample corpus is tested by the ingest tests)."""
    import subprocess

    out = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, str(REPO / "scripts" / "generate_corpus.py"), "--out", str(out),
                    "--files", "12", "--seed", "7"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A throw-away Prefect API (prefect_test_harness) with PREFECT_HOME in a temp folder.

    Its database starts as a copy of the migrated one (tests/prefect_db.py): the harness makes
    its folder with ``mkdtemp`` and opens ``prefect-test.db`` there, so the copy is put in first.
    """
    import prefect.testing.utilities as harness

    real_mkdtemp = harness.mkdtemp

    def seeded_mkdtemp(*args, **kwargs):
        folder = real_mkdtemp(*args, **kwargs)
        prefect_db.seed(Path(folder) / "prefect-test.db")
        return folder

    harness.mkdtemp = seeded_mkdtemp
    try:
        context = harness.prefect_test_harness(server_startup_timeout=180)
        context.__enter__()
    finally:
        harness.mkdtemp = real_mkdtemp
    try:
        yield Path(_PREFECT_HOME)
    finally:
        context.__exit__(None, None, None)


def pytest_configure(config):
    """The default database of every server ``tr111 sweep`` starts for itself in this process's
    PREFECT_HOME starts migrated (built once by the xdist controller, which configures first).

    Ctrl-C reaches the processes the tests start, however the suite was launched: a shell
    without job control starts a background job (``pytest ... &`` in a script) with SIGINT
    ignored, every child inherits that, and the tests that send SIGINT (the fake's command
    line, the sweep's Ctrl-C) then wait for processes that never hear it.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    prefect_db.seed(Path(_PREFECT_HOME) / "prefect.db")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/ from the current output (review the diff)")


def pytest_collection_modifyitems(config, items):
    """Slow tests first (a stable sort: each module keeps its order): with two xdist workers the
    long ones then overlap with each other and the short ones fill the end, instead of one
    worker finishing a 100 s test alone while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
