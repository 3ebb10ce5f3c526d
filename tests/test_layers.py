"""The runtime's layers, read from the code's own imports: no import cycle, and no module imports a layer above
its own (app -> outputs -> engine -> inputs -> bottom; evaluation beside app). A lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hieseg"
# Rank of each layer; a module may import its own rank or lower. evaluation and app share the top.
RANK = {"errors": 0, "version": 0, "files": 0, "lesions": 0, "inputs": 1, "engine": 2, "outputs": 3,
        "evaluation": 4, "app": 4}


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import (every import names its module)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hieseg"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("hieseg")}
        graph[module] = deps
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for module, deps in _imports().items():
        own = _layer(module)
        if own is None:  # the package root: its lazy public API may reach the top
            continue
        for dep in deps:
            layer = _layer(dep)
            if layer is not None and (RANK[layer] > RANK[own] or (own == "evaluation" and layer == "app")):
                wrong.append(f"{module} -> {dep}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_folder_holds_more_than_twelve_modules():
    for folder in [PACKAGE, *(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, (folder, len(modules))
