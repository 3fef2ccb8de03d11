"""DESIGN 4: arrows point one way (service -> beem), and the offline package knows nothing of HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BEEM_DIR = Path(__file__).resolve().parents[2] / "beem"


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(BEEM_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(BEEM_DIR)))
def test_beem_never_imports_the_server_or_http(path: Path) -> None:
    assert not _imported_roots(path) & {"service", "fastapi", "uvicorn", "starlette"}


def test_policies_import_no_tensor_library() -> None:
    """The per-sample reference and the policy table are pure Python; the array form is torch, never HTTP."""
    for name in ("exit_policies.py", "policy_table.py"):
        assert not _imported_roots(BEEM_DIR / "policies" / name) & {"torch", "numpy", "fastapi"}, name
    array_form = _imported_roots(BEEM_DIR / "policies" / "array_policies.py")
    assert "torch" in array_form
    assert not array_form & {"fastapi", "starlette", "service"}


SERVICE_DIR = BEEM_DIR.parent / "service"
ENGINE_DIR = SERVICE_DIR / "engine"


def _service_imports(path: Path) -> set[str]:
    """The `service.*` modules a file imports (absolute imports only: the house uses no relative ones)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names if alias.name.startswith("service.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service."):
            modules.add(node.module)
    return modules


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(SERVICE_DIR.parent).with_suffix("").parts)


ENGINE_FILES = sorted(ENGINE_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ENGINE_DIR)))
def test_the_engine_layout_has_its_arrows_one_way(path: Path) -> None:
    """service/engine/ reads as the design: the shared step loop, admission and ledger know no task; a task's
    engine knows no other task; a layer path knows no other path; the engine knows nothing of HTTP or of the
    versions that hold it."""
    imports = _service_imports(path)
    where = path.relative_to(ENGINE_DIR).parts
    assert not {m for m in imports if not m.startswith("service.engine.") and m != "service.metrics"}, (
        "the engine imports only itself and the metrics"
    )
    assert not _imported_roots(path) & {"fastapi", "starlette", "uvicorn"}
    if len(where) == 1:  # shared by every task
        assert not {m for m in imports if m.startswith(("service.engine.classify", "service.engine.caption"))}
    elif where[0] == "classify":
        assert not {m for m in imports if m.startswith("service.engine.caption")}
        if where[1] in ("host", "device"):
            other = "device" if where[1] == "host" else "host"
            assert not {m for m in imports if m.startswith(f"service.engine.classify.{other}")}, (
                f"the {where[1]} path imports the {other} path"
            )
            assert "service.engine.classify.classification_engine" not in imports, "a path imports its engine"
    elif where[0] == "caption":
        assert not {m for m in imports if m.startswith("service.engine.classify")}


def test_the_service_has_no_import_cycles() -> None:
    """Module-level imports between service modules form no cycle (a cycle makes import order matter)."""
    graph = {_module_of(p): _service_imports(p) for p in SERVICE_DIR.rglob("*.py")}
    graph = {module: {m for m in imports if m in graph} for module, imports in graph.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(module) :], module])}"
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_only_the_task_record_names_a_task() -> None:
    """A task's name is spelled in service/tasks.py alone; everything else asks the record (adding a task is not a
    hunt for string literals)."""
    names = {"classification", "caption"}
    spelled = []
    for path in sorted(SERVICE_DIR.rglob("*.py")):
        if path == SERVICE_DIR / "tasks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{path.relative_to(SERVICE_DIR)}:{node.lineno} {node.value!r}")
    assert not spelled, spelled
