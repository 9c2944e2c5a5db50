"""The contract between VM transports (links) and the switch that owns them.

A listener accepts VM connections and turns each into a :class:`Link`; every
link reports to one :class:`FrameSink` (the switch). Links never block: frames
that do not fit in the socket are queued up to :data:`MAX_SEND_QUEUE` bytes and
dropped (and counted) beyond that, so one stalled VM cannot grow memory
without bound or stall the others.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

# Bytes a link may hold back for a slow peer before it starts dropping frames.
MAX_SEND_QUEUE = 4 * 1024 * 1024


class VifError(Exception):
    """The switch refuses a vpnkit VIF request; ``reason`` goes to the client.

    Reasons used by the pool: "address out of range", "address in use", "pool empty".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameSink(Protocol):
    def link_opened(self, link: Link) -> None: ...

    def frame_received(self, link: Link, frame: bytes, checksum_partial: bool = False) -> None:
        """``checksum_partial``: the sender left the L4 checksum for us (virtio NEEDS_CSUM)."""
        ...

    def link_closed(self, link: Link) -> None: ...

    def batch_done(self) -> None:
        """The link delivered all frames it could read at once (optional to act on)."""
        ...

    def vif_request(self, uuid: str, preferred_ip: bytes | None) -> tuple[bytes, bytes]:
        """(mac, ip) for a vpnkit client, or raise VifError(reason)."""
        ...


class Link(abc.ABC):
    name: str  # e.g. "qemu:unix:///tmp/x.sock#3"
    mtu: int
    mac: bytes | None  # the VM's MAC if the transport told us (vpnkit), else None
    ip: bytes | None = None  # the VM's address if the transport assigned one (vpnkit)
    dropped: int = 0  # frames dropped on the way out (queue full, peer gone, too big)
    # True: after delivering frames the link always calls the sink's batch_done()
    # (or closes), so the sink need not schedule a flush of its own per frame.
    batches: bool = False
    # False: the port is a device the user set up (a TAP), never closed for being
    # quiet (vpnkit's --port-max-idle-time expires only VM connections).
    expires: bool = True
    # True: TCP may leave its checksums partial and send super-segments; the link
    # (a TAP with a virtio-net header) has the kernel complete and cut them.
    offloads: bool = False

    @abc.abstractmethod
    def send_frame(self, frame: bytes) -> None:
        """Non-blocking; queue if the socket is full; drop (count) above a bounded queue."""

    def send_frames(self, frames: list[bytes]) -> None:
        """Batch form of send_frame; stream links override it with one write."""
        for frame in frames:
            self.send_frame(frame)

    @abc.abstractmethod
    def close(self) -> None:
        """Idempotent; reports link_closed to the sink once if link_opened was reported."""


class Listener(abc.ABC):
    """One listening endpoint (or stdio); every accepted peer becomes a Link."""

    kind: str
    url: str
    links: set[Link]

    @abc.abstractmethod
    def close(self) -> None:
        """Stop accepting, close every link it made, remove its socket file."""

    @property
    def address(self) -> Any:
        """The bound address (e.g. the real TCP port when asked for port 0)."""
        return None
