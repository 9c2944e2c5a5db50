"""Every source path the docs name exists, so a move that forgets the docs fails here.

ARCHITECTURE.md's walk names functions too: a class or module of ours followed by an
attribute (`Engine.frame_received`, `routes.route`) must have that attribute, and a
bare class name (`TcpOpen`) must be defined or imported somewhere in src.

A path with a folder (`core/nat/tcp_nat.py`, `links/`; `wire/udp.build_ipv4_udp`
names its module) must exist under src/pyvpnkit or the repository root (tests/,
bench/, docs/); a bare module name (`stack6.py`) must be some file's name in src,
tests or bench.
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "pyvpnkit"
BASES = (SRC, ROOT)
DOCS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [ROOT / "ARCHITECTURE.md", ROOT / "README.md", ROOT / "bench" / "README.md",
              *(ROOT / "docs").glob("*.md")]
)  # fmt: skip

QUOTED = re.compile(r"`([^`\s]+)`")
PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*(?:\.py|/)")  # a module or a folder
ATTR = re.compile(r"((?:[\w-]+/)+\w+)\.\w+")  # `core/switch/leases.LeaseClock`
UNQUOTED = re.compile(r"(?<![\w/.`-])((?:[\w-]+/)+[\w-]+\.py)\b")  # tests/x/test_y.py in prose


def _names() -> set[str]:
    names = {p.name for p in ROOT.iterdir()}
    for top in ("src", "tests", "bench"):
        names.update(p.name for p in (ROOT / top).rglob("*"))
    return names


def _named_paths(text: str) -> set[str]:
    """Paths a doc names: quoted module or folder names, and module paths in prose."""
    found = set(UNQUOTED.findall(text))
    for token in QUOTED.findall(text):
        token = re.split(r"[(:#]", token)[0]  # `routes.py (nat_target)`, `x.py:12`
        if PATH.fullmatch(token) and not token.startswith("."):
            found.add(token)
        elif attr := ATTR.fullmatch(token):
            found.add(attr.group(1) + ".py")
    return found


def _missing(paths: set[str]) -> list[str]:
    names = _names()

    def exists(path: str) -> bool:
        if "/" in path.rstrip("/"):
            return any((base / path).exists() for base in BASES)
        return path.rstrip("/") in names

    return sorted(p for p in paths if not exists(p))


@pytest.mark.parametrize("doc", DOCS)
def test_paths_named_in_docs_exist(doc: str) -> None:
    assert _missing(_named_paths((ROOT / doc).read_text())) == []


def test_checker_finds_a_wrong_path() -> None:
    text = ("see `core/tcp_nat.py`, `core/nat/tcp_nat.py`, `core/leases.LeaseClock`,"
            " `core/switch/leases.LeaseClock` and tests/unit/test_nowhere.py")
    assert _missing(_named_paths(text)) == [
        "core/leases.py", "core/tcp_nat.py", "tests/unit/test_nowhere.py",
    ]


DOTTED = re.compile(r"`([A-Za-z_][\w/]*(?:\.[A-Za-z_]\w*)+)(?:\(\))?`")  # `Stack.drain()`
CLASS = re.compile(r"`([A-Z][a-z]\w*)`")
FOREIGN = {"IcmpSendEcho2"}  # Windows' API, named where Windows is discussed


@functools.cache
def _definitions() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Attributes of every class of ours (with its bases'), names at each module's top."""
    classes: dict[str, set[str]] = {}
    bases: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = modules.setdefault(path.stem, set())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                top.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)):
                top.update(_bound(node))
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            bases.setdefault(cls.name, set()).update(
                b.id for b in cls.bases if isinstance(b, ast.Name))
            attrs = classes.setdefault(cls.name, set())
            for n in ast.walk(cls):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    attrs.add(n.name)
                elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                    attrs.update(_bound(n))
                elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) \
                        and isinstance(n.value, ast.Name) and n.value.id == "self":
                    attrs.add(n.attr)
    for name in classes:  # inherited attributes, nearest bases first
        todo, seen = list(bases[name]), set()
        while todo:
            base = todo.pop()
            if base in classes and base not in seen:
                seen.add(base)
                classes[name] |= classes[base]
                todo.extend(bases[base])
    return classes, modules


def _bound(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[attr-defined]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def _unknown_names(text: str) -> list[str]:
    classes, modules = _definitions()
    known = set(classes) | set().union(*modules.values()) | set(dir(builtins)) | FOREIGN
    wrong = [name for name in CLASS.findall(text) if name not in known]
    for token in DOTTED.findall(text):
        head, *attrs = token.split(".")
        head = head.rsplit("/", 1)[-1]
        if attrs[0].startswith("__") or attrs[-1] in ("py", "md", "toml", "json"):
            continue  # dunders, file names
        if head in classes:
            ok = attrs[0] in classes[head]
        elif head in modules:
            ok = attrs[0] in modules[head] and (
                len(attrs) == 1 or attrs[0] not in classes or attrs[1] in classes[attrs[0]])
        else:
            continue  # not ours: `os.read`, `int.from_bytes`
        if not ok:
            wrong.append(token)
    return wrong


def test_names_in_architecture_exist() -> None:
    assert _unknown_names((ROOT / "ARCHITECTURE.md").read_text()) == []


def test_name_checker_finds_a_wrong_name() -> None:
    text = ("`Engine.frame_received`, `TapLink.batches`, `routes.route`, `ConfigWatcher`,"
            " `Engine.receive_frame`, `ipfrag.FragmentReassembly.nowhere`, `os.read`")
    assert _unknown_names(text) == [
        "ConfigWatcher", "Engine.receive_frame", "ipfrag.FragmentReassembly.nowhere",
    ]
