"""Which build runs: the mypyc-compiled one or pure Python (setup.py decides at install)."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES

import pyvpnkit.core.stack
import pyvpnkit.wire.ipv4


def compiled() -> bool:
    """True when wire/ and core/ run as C extensions built by mypyc."""
    modules = (pyvpnkit.core.stack, pyvpnkit.wire.ipv4)
    return all((m.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)) for m in modules)


def describe() -> str:
    """One line for ``--version``."""
    return "compiled with mypyc" if compiled() else "pure Python"
