"""Effects the core asks the runtime to perform on the host.

Frames for VMs are not effects: the stack returns them separately so the hot
path does not allocate an object per frame.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TcpOpen:
    """Connect a host socket for a new flow from a VM: TCP to (host, port), or a unix socket."""

    flow_id: int
    host: str
    port: int
    unix_path: str | None = None


@dataclass(frozen=True, slots=True)
class TcpWrite:
    flow_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TcpShutdown:
    """The VM sent FIN: half-close the host socket for writing."""

    flow_id: int


@dataclass(frozen=True, slots=True)
class TcpCloseHost:
    """Forget the host socket (reset=True aborts it with RST via SO_LINGER 0)."""

    flow_id: int
    reset: bool = False


@dataclass(frozen=True, slots=True)
class TcpPauseReading:
    flow_id: int


@dataclass(frozen=True, slots=True)
class TcpResumeReading:
    flow_id: int


@dataclass(frozen=True, slots=True)
class ProxyOpen:
    """A new VM flow the HTTP proxy serves instead of a host socket (mode http/https/explicit)."""

    flow_id: int
    dst: str
    port: int
    mode: str
