"""The wheel, installed outside the checkout, works on its own.

pyproject lists packages explicitly and maps flows/, tasks/, warehouse/ (and the data
folders) into the tr111 namespace; a package or data file missing from that list only
shows outside a checkout, where nothing falls back to the repository. So: build the wheel
from a copy of the source, install it into a fresh virtualenv (heavy dependencies from the
machine's site-packages), and from an empty folder run ``tr111 sweep --matrix quick``,
``tr111 report`` and ``tr111 query`` against a fake Ollama.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tr111.fake_ollama.server import FakeOllama, FakeTimings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# top-level source folder -> its package in the wheel
MAPPED = {"tr111": "tr111", "flows": "tr111/flows", "tasks": "tr111/tasks", "warehouse": "tr111/warehouse"}
DATA = {"templates": "tr111/templates", "sweeps": "tr111/sweeps", "corpus/sample": "tr111/corpus/sample"}
SKIP = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".venv",
                              ".pytest_cache", "reports", "*.duckdb", "*.duckdb.wal", ".whl", ".gl")


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel (built from a copy: no build/ in the shared tree, no stale files) in a venv."""
    tmp = tmp_path_factory.mktemp("pkg")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=SKIP, symlinks=True)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", tmp / "dist", source], timeout=300)
    wheel = next((tmp / "dist").glob("tr111-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], timeout=120)
    python = venv / "bin" / "python"
    # The machine's pip (system site-packages) installs into the venv; -I: the editable
    # checkout install outside the venv is not "already satisfied".
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "-I", wheel], timeout=300)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                        ).stdout.strip())
    return {"source": source, "wheel": wheel, "venv": venv, "python": python, "purelib": purelib}


@pytest.fixture
def user_env(tmp_path) -> dict:
    """A user's shell outside any checkout: own HOME and data home, no PYTHONPATH, no TR111_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TR111_", "PYTHON", "OLLAMA_", "PREFECT_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "xdg"),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               TR111_GPU_TELEMETRY="false")
    return env


def test_every_package_and_data_file_is_in_the_wheel(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    source = installed["source"]
    for folder, package in MAPPED.items():  # a new package cannot be forgotten in pyproject's list
        for init in (source / folder).rglob("__init__.py"):
            rel = init.relative_to(source / folder).as_posix()
            assert f"{package}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"
    for folder, target in DATA.items():  # templates/*/*.j2, sweeps/*.yaml, corpus/sample/**
        files = [p for p in (source / folder).rglob("*") if p.is_file()]
        assert files, folder
        for path in files:
            rel = path.relative_to(source / folder).as_posix()
            assert f"{target}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"
    top = {n.split("/")[0] for n in names}
    assert top == {"tr111", installed["wheel"].name.split("-py3")[0] + ".dist-info"}
    assert "tr111.cli:main" in zipfile.ZipFile(installed["wheel"]).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()


def test_installed_tr111_imports_from_the_venv_not_the_checkout(installed, user_env, tmp_path):
    purelib = installed["purelib"]
    for name in ("flows", "tasks", "warehouse", "templates", "sweeps", "corpus"):
        assert not (purelib / name).exists(), f"a top-level {name} landed in site-packages"
    empty = tmp_path / "empty"
    empty.mkdir()
    code = ("import json, tr111, tr111.flows, tr111.tasks, tr111.warehouse, tr111.paths as p;"
            "print(json.dumps([tr111.__file__, list(tr111.__path__), tr111.flows.__file__,"
            " tr111.warehouse.__file__, str(p.templates_dir()), str(p.matrix_path('quick')),"
            " str(p.sample_corpus())]))")
    found = json.loads(_run([installed["python"], "-c", code], cwd=empty, env=user_env).stdout)
    for path in [found[0], *found[1], *found[2:]]:
        assert Path(path).is_relative_to(purelib / "tr111"), path
    assert Path(found[5]).is_file() and Path(found[6]).is_dir()


@pytest.mark.usefixtures("prefect_harness")
def test_sweep_report_and_query_from_an_empty_folder(installed, user_env, tmp_path):
    """The console script from an empty folder; the sweep uses the session's Prefect API
    (like faults_support.cli_env) instead of starting an ephemeral server of its own."""
    from prefect.settings import PREFECT_API_URL

    user_env["PREFECT_API_URL"] = PREFECT_API_URL.value() or ""
    tr111 = installed["venv"] / "bin" / "tr111"
    cwd = tmp_path / "anywhere"
    cwd.mkdir()
    home = Path(user_env["XDG_DATA_HOME"]) / "tr111"
    with FakeOllama(FakeTimings(load_ms=2, token_ms=0.2, tokens=4)) as fake:
        done = _run([tr111, "sweep", "--matrix", "quick", "--runs", "1", "--ollama-url", fake.url,
                     "--model", "gemma3:270m", "--sweep-id", "pkg-1"], cwd=cwd, env=user_env, timeout=300)
    assert "status: completed" in done.stdout
    report = Path(done.stdout.split("report: ", 1)[1].splitlines()[0])
    assert report == home / "reports" / "pkg-1" / "technical_report.md" and report.is_file()
    assert (home / "tr111.duckdb").is_file()

    again = _run([tr111, "report"], cwd=cwd, env=user_env, timeout=120)
    assert again.stdout.strip() == str(report)
    count = _run([tr111, "query", "SELECT count(*) FROM llm_calls"], cwd=cwd, env=user_env, timeout=120)
    assert _cells(count.stdout) == ["count_star()", "10"]  # quick: 5 configs x 1 run x 2 calls
    corpus = _run([tr111, "query", "SELECT DISTINCT corpus_dir FROM sweeps"], cwd=cwd, env=user_env,
                  timeout=120)
    assert _cells(corpus.stdout)[1:] == [str(installed["purelib"] / "tr111" / "corpus" / "sample")]
    assert list(cwd.iterdir()) == []  # nothing written where the command ran


def _cells(table: str) -> list[str]:
    """The cells of a one-column table as ``tr111 query`` draws it."""
    return [line.strip("│┃ ") for line in table.splitlines() if line.strip().startswith(("│", "┃"))]
