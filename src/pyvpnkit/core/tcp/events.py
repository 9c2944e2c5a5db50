"""What a :class:`~pyvpnkit.core.tcp.TcpConnection` tells its owner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Established:
    """The three-way handshake completed."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """In-order bytes from the peer, for the host side (ack them with ``consumed``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer's FIN arrived in order: end of its byte stream."""


@dataclass(frozen=True, slots=True)
class SendSpace:
    """The send buffer drained past its low-water mark: the host side may send again."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The peer reset the connection."""


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Retransmissions, handshake or keepalive probes went unanswered."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The byte streams are finished (both FINs done, reset, timeout or abort)."""


TcpEvent = Established | DataReceived | PeerClosed | SendSpace | Reset | TimedOut | Closed
