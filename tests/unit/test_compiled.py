"""The modules pyproject.toml lists as compiled keep to what mypyc compiles, and an
install runs them all compiled or all pure (ARCHITECTURE.md, "Compiled build").

The rules are checked on the source, so the pure build's CI run catches a break
before anyone compiles: no interpreted subclass of a compiled class (in the
rest of the package, the tests or the benchmarks), no monkeypatching of a
compiled module or class; in a compiled module no ``property(...)`` class
attribute, no ``TYPE_CHECKING``-only type, and a class field typed by a builtin
mypyc does not load itself (``memoryview``) has it imported from ``builtins``.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import tomllib
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from pyvpnkit import build

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
LISTED: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pyvpnkit"][
    "compiled"
]
# Bases that make a class an ordinary Python class under mypyc, which may be subclassed.
NOT_NATIVE = {"Protocol", "NamedTuple", "TypedDict", "Enum", "IntEnum", "IntFlag", "Flag"}
# Builtin types mypyc loads itself as a class field's type; it looks any other one
# (memoryview, object) up in the module's globals, so the module imports it from builtins.
MYPYC_BUILTINS = {
    "bool", "bytearray", "bytes", "dict", "float", "frozenset", "int", "list", "range", "set",
    "str", "tuple", "type",
}  # fmt: skip


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _compiled() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for name in LISTED:
        paths = [SRC / name] if name.endswith(".py") else sorted((SRC / name).rglob("*.py"))
        files.update((_module(p), p) for p in paths)
    return files


COMPILED = _compiled()


def _interpreted() -> Iterator[Path]:
    for top in (SRC, ROOT / "tests", ROOT / "bench"):
        yield from (p for p in top.rglob("*.py") if p not in COMPILED.values())


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _name(node.value)
        return None if head is None else f"{head}.{node.attr}"
    if isinstance(node, ast.Subscript):  # Generic[T]-style bases
        return _name(node.value)
    return None


def _native_classes() -> set[str]:
    """Compiled classes an interpreted class may not derive from."""
    native: set[str] = set()
    for module, path in COMPILED.items():
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {(_name(b) or "").rsplit(".", 1)[-1] for b in node.bases}
            marked = "allow_interpreted_subclasses" in ast.unparse(node.decorator_list)
            if not bases & NOT_NATIVE and not marked:
                native.add(f"{module}.{node.name}")
    for module, path in COMPILED.items():  # re-exports (core/tcp/__init__.py and friends)
        for local, imported in _resolver(ast.parse(path.read_text())).items():
            if imported in native:
                native.add(f"{module}.{local}")
    return native


def _resolver(tree: ast.Module) -> dict[str, str]:
    """Local name → what it was imported as (``module`` or ``module.Name``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _resolve(node: ast.expr, names: dict[str, str]) -> str | None:
    dotted = _name(node)
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    if head not in names:
        return None
    return f"{names[head]}.{rest}" if rest else names[head]


def test_no_interpreted_subclass_or_monkeypatch_of_compiled_code() -> None:
    native = _native_classes()
    offences: list[str] = []
    for path in _interpreted():
        tree = ast.parse(path.read_text())
        names = _resolver(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    target = _resolve(base, names)
                    if target in native:
                        offences.append(f"{where}: {node.name} subclasses compiled {target}")
            elif (
                isinstance(node, ast.Call) and _name(node.func) == "monkeypatch.setattr"
                and node.args and not isinstance(node.args[0], ast.Constant)
            ):  # fmt: skip
                target = _resolve(node.args[0], names)
                if target is not None and (target in native or target in COMPILED):
                    offences.append(f"{where}: monkeypatches compiled {target}")
    assert offences == [], "implement the Protocol, or inject the collaborator"


def test_compiled_modules_use_only_what_mypyc_compiles() -> None:
    offences: list[str] = []
    for module, path in COMPILED.items():
        tree = ast.parse(path.read_text())
        imported = _resolver(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for field in node.body:
                    if isinstance(field, ast.AnnAssign) and isinstance(field.annotation, ast.Name):
                        name = field.annotation.id
                        if (hasattr(builtins, name) and name not in MYPYC_BUILTINS
                                and imported.get(name) != f"builtins.{name}"):
                            offences.append(
                                f"{module}:{field.lineno}: from builtins import {name}")
            if isinstance(node, ast.Name) and node.id == "TYPE_CHECKING":
                offences.append(f"{module}:{node.lineno}: TYPE_CHECKING-only imports")
            if isinstance(node, ast.Call) and _name(node.func) == "property":
                offences.append(f"{module}:{node.lineno}: property(...), not @property")
    assert offences == []


def test_the_listed_modules_run_all_compiled_or_all_pure() -> None:
    """CI says which build it installed (PYVPNKIT_BUILD): a module mypyc could not
    compile makes setup.py fall back to pure Python, and this fails."""
    kinds = {
        module: (importlib.import_module(module).__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))
        for module in COMPILED
    }
    expected = os.environ.get("PYVPNKIT_BUILD")
    if expected is not None:
        assert expected in ("compiled", "pure")
        assert build.compiled() == (expected == "compiled")
    assert set(kinds.values()) == {build.compiled()}, kinds
