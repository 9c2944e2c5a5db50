"""Build pyvpnkit, compiling its hot modules with mypyc when that is possible.

One source, two builds. `pip install .` compiles what pyproject.toml's
`[tool.pyvpnkit] compiled` lists (the codecs and the sans-I/O core: the
per-packet work) into C extensions when a C compiler and the Python headers
exist; the .py files are installed beside them, so without a compiler, with
`PYVPNKIT_PURE=1`, for an editable install, or when mypyc or the compiler
fails, the same package runs as pure Python. `pyvpnkit --version`
says which build runs. What compiled code may not do is in ARCHITECTURE.md
("Compiled build"); tests/unit/test_compiled.py checks it.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

SRC = Path(__file__).parent / "src"


def compiled_sources() -> list[str]:
    """The .py paths (relative to setup.py) mypyc compiles: pyproject's
    [tool.pyvpnkit] compiled list, packages whole (a name without .py) or modules."""
    with open(SRC.parent / "pyproject.toml", "rb") as f:
        listed = tomllib.load(f)["tool"]["pyvpnkit"]["compiled"]
    paths: list[str] = []
    for name in listed:
        if name.endswith(".py"):
            paths.append(f"src/{name}")
        else:
            paths += sorted(str(p.relative_to(SRC.parent)) for p in (SRC / name).rglob("*.py"))
    return paths


def why_pure() -> str | None:
    """Why this build stays pure Python, or None when it can compile."""
    if os.environ.get("PYVPNKIT_PURE", "") not in ("", "0"):
        return "PYVPNKIT_PURE is set"
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not CPython"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; Debian: python3-dev)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    return None


class OptionalBuildExt(build_ext):
    """Build the extensions, or fall back to the pure build if that fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # a compiler error: the .py files still install
            print(f"pyvpnkit: compiling failed ({error}); pure-Python build", file=sys.stderr)
            # A half-built set would not import (the shims need the shared
            # library): keep none of it.
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []


def ext_modules() -> list[Any]:
    commands = set(sys.argv[1:])
    if "editable_wheel" in commands or "develop" in commands:
        print("pyvpnkit: editable install: pure Python (a .so would hide edits)", file=sys.stderr)
        return []
    if not commands & {"build", "build_ext", "bdist_wheel", "install"}:
        return []  # metadata only (egg_info, dist_info, sdist): nothing to compile
    reason = why_pure()
    if reason is not None:
        print(f"pyvpnkit: pure-Python build: {reason}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    try:
        return list(mypycify(compiled_sources(), opt_level="3", debug_level="0"))
    except (Exception, SystemExit) as error:  # mypyc refused the source
        print(f"pyvpnkit: mypyc failed ({error}); pure-Python build", file=sys.stderr)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
