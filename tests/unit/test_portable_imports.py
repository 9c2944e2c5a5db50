"""`run --listen-*` and the gvproxy and vpnkit drop-ins import no Linux-only module (issue 25).

A Mac has no TAP, namespaces, Landlock or seccomp; the modules that wrap them
are imported inside the functions that use them, never at module level on the
way from these entry points, so the front ends start on any POSIX host. The
walk follows module-level imports (not `if TYPE_CHECKING:` ones), as Python
runs them at start-up.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.unit.test_layers import PACKAGE, _module

LINUX_ONLY = {
    "pyvpnkit.runtime.sysns",  # ctypes: setns, unshare, mount, prctl
    "pyvpnkit.runtime.netns",
    "pyvpnkit.links.tapdev",  # /dev/net/tun
    "pyvpnkit.links.tap",
    "pyvpnkit.runtime.landlock",
    "pyvpnkit.runtime.seccomp",
    "pyvpnkit.frontends.slirp4netns.sandbox",
}
# The entry points, and the modules `run` imports lazily on its way to serving VMs.
ROOTS = (
    "pyvpnkit.__main__", "pyvpnkit.frontends.cli", "pyvpnkit.frontends.gvproxy.cli",
    "pyvpnkit.frontends.vpnkit",
    "pyvpnkit.app.service", "pyvpnkit.links", "pyvpnkit.runtime.capabilities",
)  # fmt: skip


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _module_level_imports(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.If) and not _type_checking(node):
            names |= _module_level_imports(node.body) | _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                names |= _module_level_imports(part)
    return names


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        found = _module_level_imports(ast.parse(Path(path).read_text()).body)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parents = {".".join(n.split(".")[:i]) for n in found for i in range(2, n.count(".") + 1)}
        graph[module] = {n for n in found | parents if n in files and n != module}
    return graph


def _paths_to_linux_only(roots: tuple[str, ...]) -> list[str]:
    graph = _graph()
    seen: dict[str, list[str]] = {root: [root] for root in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        for dep in sorted(graph[module]):
            if dep not in seen:
                seen[dep] = [*seen[module], dep]
                todo.append(dep)
    return [" -> ".join(path) for m, path in sorted(seen.items()) if m in LINUX_ONLY]


def test_front_ends_import_no_linux_only_module() -> None:
    assert _paths_to_linux_only(ROOTS) == []


def test_the_walk_sees_linux_only_imports() -> None:
    """The slirp4netns drop-in is Linux's by nature: the walk must find its namespaces."""
    paths = _paths_to_linux_only(("pyvpnkit.frontends.slirp4netns.run",))
    assert "pyvpnkit.frontends.slirp4netns.run -> pyvpnkit.runtime.netns" in paths
