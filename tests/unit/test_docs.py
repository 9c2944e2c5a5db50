"""Every source path the docs name exists, so a move that forgets the docs fails here.

A name with a folder (`core/nat/tcp_nat.py`, `links/`, or `wire/udp.build_ipv4_udp`
for its module) must exist under
src/pyvpnkit or the repository root (tests/, bench/, docs/); a bare module name
(`stack6.py`) must be some file's name in src, tests or bench.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASES = (ROOT / "src" / "pyvpnkit", ROOT)
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
    return sorted(
        p for p in paths
        if not ("/" in p.rstrip("/") and any((b / p).exists() for b in BASES))
        and not ("/" not in p.rstrip("/") and p.rstrip("/") in names)
    )  # fmt: skip


@pytest.mark.parametrize("doc", DOCS)
def test_paths_named_in_docs_exist(doc: str) -> None:
    assert _missing(_named_paths((ROOT / doc).read_text())) == []


def test_checker_finds_a_wrong_path() -> None:
    text = ("see `core/tcp_nat.py`, `core/nat/tcp_nat.py`, `core/leases.LeaseClock`,"
            " `core/switch/leases.LeaseClock` and tests/unit/test_nowhere.py")
    assert _missing(_named_paths(text)) == [
        "core/leases.py", "core/tcp_nat.py", "tests/unit/test_nowhere.py",
    ]
