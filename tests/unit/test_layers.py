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
    "errors": 0, "wire": 0, "build": 0,
    "core": 1,
    "links": 2,
    "runtime": 3,
    "api": 4,
    "app": 5,
    "frontends": 6, "__main__": 6,
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


# -- one door into the core ----------------------------------------------------------
# The runtime and the API change the core only through its methods (host events in,
# drained frames and effects out): they never assign an attribute of a core object.
# Without types at hand, an assignment counts when its name is an attribute some
# core class holds and no class of the assigning module does (``self.x = ...`` is
# always the object's own).


def _attributes(tree: ast.AST) -> set[str]:
    """Names the classes of a module hold: what their methods assign on self, and fields."""
    names: set[str] = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def _assigned_attributes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, target) of every attribute assignment not on ``self`` itself."""
    return [
        (node.lineno, ast.unparse(node))
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]  # fmt: skip


def test_runtime_and_api_assign_no_attribute_of_a_core_object() -> None:
    core: set[str] = set()
    for path in (PACKAGE / "core").rglob("*.py"):
        core |= _attributes(ast.parse(path.read_text()))
    offences = []
    for layer in ("runtime", "api"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            tree = ast.parse(path.read_text())
            own = _attributes(tree)
            offences += [
                f"{path.relative_to(PACKAGE)}:{line}: {target}"
                for line, target in _assigned_attributes(tree)
                if target.rsplit(".", 1)[1] in core - own
            ]  # fmt: skip
    assert offences == []


def test_the_door_check_sees_an_assignment_into_the_core() -> None:
    """The check above would have caught what the runtime once did."""
    tree = ast.parse("def f(stack):\n    stack.tcp.flow_log = False\n")
    core = _attributes(ast.parse((PACKAGE / "core" / "nat" / "tcp_nat.py").read_text()))
    assert [t for _, t in _assigned_attributes(tree) if t.rsplit(".", 1)[1] in core] == [
        "stack.tcp.flow_log"]


# -- front ends ------------------------------------------------------------------------
# Each command line maps its own flags straight onto Options and NetConfig. None builds
# another's argv and parses it with that one's parser (cli.make_parser or the like): they
# share app/, core/ and the option groups two command lines really have in common
# (proxy_options, vpnkit_options), never another front end's modules.

FRONT_ENDS = {"cli", "vpnkit", "slirp4netns", "gvproxy"}


def _front_end(module: str) -> str | None:
    """Which front end a module belongs to (`pyvpnkit.__main__` runs the cli), if any."""
    if module == "pyvpnkit.__main__":
        return "cli"
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "frontends" and parts[2] in FRONT_ENDS:
        return parts[2]
    return None


def _borrowed(graph: dict[str, set[str]]) -> list[str]:
    """Imports from one front end into another."""
    return [
        f"{m} -> {n}"
        for m, deps in sorted(graph.items()) if _front_end(m) is not None
        for n in sorted(deps) if _front_end(n) not in (None, _front_end(m))
    ]  # fmt: skip


def test_no_front_end_imports_another() -> None:
    assert _borrowed(_graph()) == []


def test_the_front_end_check_sees_a_borrowed_parser() -> None:
    """The check above would have caught what pyvpnkit-vpnkit and gvproxy once did."""
    graph = {
        "pyvpnkit.frontends.gvproxy.run": {
            "pyvpnkit.frontends.cli", "pyvpnkit.frontends.gvproxy.config"
        },
        "pyvpnkit.frontends.vpnkit": {"pyvpnkit.frontends.vpnkit_options", "pyvpnkit.app.options"},
        "pyvpnkit.frontends.slirp4netns.run": {"pyvpnkit.frontends.vpnkit"},
    }
    assert _borrowed(graph) == ["pyvpnkit.frontends.gvproxy.run -> pyvpnkit.frontends.cli",
                                "pyvpnkit.frontends.slirp4netns.run -> pyvpnkit.frontends.vpnkit"]
