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
