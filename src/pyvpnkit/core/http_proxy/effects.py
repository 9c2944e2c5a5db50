"""What a proxied flow asks of the runtime: the machine's effects, one noun each.

Kept apart from machine.py so the runtime can name them without importing h11
(about 25 ms) before the first proxied connection.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connect:
    """Open upstream connection ``conn``: to a proxy, or (direct) where the VM asked."""

    conn: int
    host: str  # an address, or a name the runtime resolves
    port: int
    direct: bool


@dataclass(frozen=True, slots=True)
class Send:
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ShutdownUpstream:
    """The VM finished sending in a tunnel: half-close the upstream."""

    conn: int


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    conn: int


@dataclass(frozen=True, slots=True)
class ToVm:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndVm:
    """Everything for the VM is sent: FIN."""


@dataclass(frozen=True, slots=True)
class ResetVm:
    """Abort the VM's connection (RST)."""


Effect = Connect | Send | ShutdownUpstream | CloseUpstream | ToVm | EndVm | ResetVm
