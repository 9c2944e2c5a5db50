"""The package's layers import only downwards, and no module imports itself back.

wire → core → links → runtime → api → app → the command lines. Lazy imports
inside functions count too: a circle through one is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyvpnkit

PACKAGE = Path(pyvpnkit.__file__).parent

# Lower number = lower layer; a module may import its own layer or any lower one.
LAYERS = {
    "errors": 0, "wire": 0,
    "core": 1,
    "links": 2,
    "runtime": 3,
    "api": 4,
    "app": 5,
    "cli": 6, "vpnkit_cli": 6, "slirp4netns": 6, "gvproxy": 6, "proxy_options": 6,
    "usage": 6,
    "__main__": 6,
}  # fmt: skip


def _module(path: Path) -> str:
    parts = ["pyvpnkit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("pyvpnkit.")}


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {n for n in _imports(p) if n in files and n != m} for m, p in files.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    assert top in LAYERS, f"{module}: place it in a layer in test_layers.LAYERS"
    return LAYERS[top]


def test_layers_import_only_downwards() -> None:
    upward = [
        f"{m} -> {n}"
        for m, deps in _graph().items() if m != "pyvpnkit"
        for n in deps if n != "pyvpnkit" and _layer(n) > _layer(m)
    ]  # fmt: skip
    assert upward == []


def test_no_import_circle() -> None:
    graph = _graph()
    done: set[str] = set()
    circles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            circles.append(path[path.index(m):] + [m])
            return
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
    assert circles == []
