"""Rules of the layout that a reader relies on, checked on the source (ast, no imports)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = sorted(p for p in (REPO / "tr111").rglob("*.py"))
COMPOSERS = sorted([*(REPO / "flows").glob("*.py"), *(REPO / "tasks").glob("*.py")])


def imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def test_only_flows_and_tasks_import_prefect():
    offenders = [f"{p.relative_to(REPO)}: {module}" for p in CORE + [*(REPO / "warehouse").glob("*.py")]
                 for module, _ in imports(p) if module == "prefect" or module.startswith("prefect.")]
    assert offenders == []
    assert any(m.startswith("prefect") for p in COMPOSERS for m, _ in imports(p))  # the rule has teeth


def test_flows_and_tasks_take_no_private_names_from_other_modules():
    offenders = [f"{p.relative_to(REPO)}: {module}.{name}" for p in COMPOSERS
                 for module, names in imports(p) if module.startswith("tr111")
                 for name in names if name.startswith("_")]
    assert offenders == []


def module_caches(paths) -> list[str]:
    """Module-level names bound to an empty list, dict or set: state that fills at run time."""
    out = []
    for path in paths:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            literal = isinstance(value, (ast.List, ast.Dict, ast.Set)) and not (
                getattr(value, "elts", None) or getattr(value, "keys", None))
            call = isinstance(value, ast.Call) and getattr(value.func, "id", "") in (
                "set", "dict", "list", "defaultdict", "OrderedDict") and not value.args
            if literal or call:
                out.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return out


def test_flows_and_tasks_hold_no_module_level_mutable_state():
    assert module_caches(COMPOSERS) == []


def test_the_core_keeps_no_client_engine_or_sampler_caches_at_module_level():
    """What the sweep context owns (clients, samplers, engines) must not come back as a cache."""
    core = [p for p in CORE + [*(REPO / "warehouse").glob("*.py")] if "fake_ollama" not in p.parts]
    # the migration registry (filled by a decorator at import, simonw/llm's pattern) and the
    # CLI's progress listeners (subscribe/unsubscribe around one command) are the two allowed
    assert module_caches(core) == ["tr111/progress.py:8", "warehouse/migrations.py:15"]


def test_every_error_class_lives_in_errors_py():
    offenders = []
    for path in CORE + COMPOSERS + [*(REPO / "warehouse").glob("*.py")]:
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases):
                offenders.append(f"{path.relative_to(REPO)}: {node.name}")
    assert offenders == []


def test_prefect_yaml_entrypoints_load_from_a_checkout(monkeypatch):
    """`prefect deploy --all` from the repository root loads each entrypoint by path; the flow
    it finds must be tr111-sweep, and the built-in matrix names it passes must resolve."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from tr111.paths import matrix_path

    monkeypatch.chdir(REPO)
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    assert spec["deployments"]
    flows = {"flows/sweep.py:tr111_sweep": "tr111-sweep", "flows/fleet.py:tr111_fleet": "tr111-fleet",
             "flows/fleet.py:tr111_fleet_config": "tr111-fleet-config"}
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == flows[deployment["entrypoint"]]
        if "matrix" in deployment.get("parameters", {}):
            assert matrix_path(deployment["parameters"]["matrix"]).is_file()
        if flow.name != "tr111-sweep":  # a fleet flow runs on the fleet's pool, the coordinator on control
            assert deployment["work_pool"]["name"] == "tr111-fleet"
            assert (deployment["work_pool"]["work_queue_name"] == "control") == (flow.name == "tr111-fleet")
