"""Which build runs: the mypyc-compiled one or pure Python (setup.py decides at install)."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec

# one module of each compiled package, and one of the runtime modules compiled too
PROBES = ("pyvpnkit.core.switch.stack", "pyvpnkit.wire.ipv4", "pyvpnkit.runtime.engine")


def compiled() -> bool:
    """True when wire/, core/ and the runtime's hot path load as C extensions built by mypyc."""
    origins = [getattr(find_spec(name), "origin", None) or "" for name in PROBES]
    return all(origin.endswith(tuple(EXTENSION_SUFFIXES)) for origin in origins)


def describe() -> str:
    """One line for ``--version``."""
    return "compiled with mypyc" if compiled() else "pure Python"
