"""Packet links: one Ethernet frame per message, no length header.

* bess: ``unixpacket://`` SOCK_SEQPACKET; each accepted connection is a link.
* vfkit: ``unixgram://`` SOCK_DGRAM; one socket, and every peer address that
  sends to it is a link (the VM must bind its own path so we can answer).
  A leading 4-byte ``VFKT`` datagram (older vfkit) is a greeting, not a frame;
  one from a peer we already know means the VM restarted, so its old link is
  closed and a fresh one opened.

Message boundaries are kept by the kernel, so a bad message (too short, or
longer than an MTU-sized frame) is dropped and counted; the link stays up.
asyncio has no transports for these socket types, so the loop's reader and
writer callbacks drive non-blocking sockets directly.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from pyvpnkit.links.base import MAX_SEND_QUEUE, FrameSink, Link, Listener
from pyvpnkit.links.sockets import bind_unix, set_dgram_buffers
from pyvpnkit.links.url import ListenAddress

log = logging.getLogger("pyvpnkit.links")

READ_BATCH = 256  # messages per readiness callback before letting other links run
MAX_DGRAM_PEERS = 64
VFKIT_MAGIC = b"VFKT"
MIN_FRAME = 14
# An unconnected datagram socket never polls unwritable for a full peer, so a
# blocked vfkit peer is retried on a short timer instead of a writer callback.
DGRAM_RETRY = 0.001
_PEER_GONE = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN}
)


def max_frame_for(mtu: int) -> int:
    """Largest frame accepted from a VM: MTU + Ethernet header + one VLAN tag."""
    return mtu + 14 + 4


class PacketLink(Link):
    """Shared send queue, size checks and close bookkeeping for packet links."""

    def __init__(
        self, sink: FrameSink, mtu: int, name: str, on_close: Callable[[Any], None] | None
    ) -> None:
        self.sink = sink
        self.mtu = mtu
        self.name = name
        self.mac = None
        self.dropped = 0
        self.bad = 0  # malformed messages received and dropped
        self.max_frame = max_frame_for(mtu)
        self._on_close = on_close
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._closed = False
        self._loop = asyncio.get_running_loop()

    def _open(self) -> None:
        self.sink.link_opened(self)

    def _check(self, n: int) -> bool:
        if MIN_FRAME <= n <= self.max_frame:
            return True
        self.bad += 1
        level = logging.WARNING if self.bad == 1 else logging.DEBUG
        log.log(
            level,
            "%s: dropped a %d-byte message (frames are %d..%d bytes)",
            self.name,
            n,
            MIN_FRAME,
            self.max_frame,
        )
        return False

    # -- sending ---------------------------------------------------------------

    @abc.abstractmethod
    def _send_now(self, frame: bytes) -> bool:
        """Send one message; False if the socket would block."""

    @abc.abstractmethod
    def _arm(self) -> None:
        """Call _flush once the socket may take more."""

    @abc.abstractmethod
    def _disarm(self) -> None:
        """Stop calling _flush (the queue is empty or the link closed)."""

    def send_frame(self, frame: bytes) -> None:
        if self._closed:
            self.dropped += 1
            return
        if not self._queue:
            try:
                if self._send_now(frame):
                    return
            except OSError as exc:
                self._send_failed(exc)
                return
        if self._queued + len(frame) > MAX_SEND_QUEUE:
            self.dropped += 1
            return
        if not self._queue:
            self._arm()
        self._queue.append(frame)
        self._queued += len(frame)

    def _flush(self) -> None:
        q = self._queue
        while q and not self._closed:
            try:
                sent = self._send_now(q[0])
            except OSError as exc:
                self._send_failed(exc)
                if self._closed:
                    return
                sent = True  # dropped and counted; go on with the next one
            if not sent:
                self._arm()
                return
            self._queued -= len(q.popleft())
        self._disarm()

    def _send_failed(self, exc: OSError) -> None:
        self.dropped += 1
        if exc.errno in _PEER_GONE:
            log.info("%s: peer gone (%s)", self.name, exc.strerror)
            self.close()
        else:
            log.debug("%s: send failed: %s", self.name, exc)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._disarm()
        self._queue.clear()
        self._queued = 0
        self._release()
        self.sink.link_closed(self)
        if self._on_close is not None:
            self._on_close(self)

    def _release(self) -> None:
        """Give back transport resources (socket, reader)."""


# -- bess (SOCK_SEQPACKET) ------------------------------------------------------


class SeqpacketLink(PacketLink):
    def __init__(
        self,
        sock: socket.socket,
        sink: FrameSink,
        mtu: int,
        name: str,
        on_close: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(sink, mtu, name, on_close)
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._writing = False
        self._open()
        if not self._closed:
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        recv, size, check = self.sock.recv, self.max_frame + 1, self._check
        deliver = self.sink.frame_received
        for _ in range(READ_BATCH):
            try:
                data = recv(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.info("%s: read failed: %s", self.name, exc)
                self.close()
                return
            if not data:
                self.close()
                return
            if check(len(data)):
                deliver(self, data)
                if self._closed:
                    return

    def _send_now(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    def _arm(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._flush)

    def _disarm(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _release(self) -> None:
        self._loop.remove_reader(self._fd)
        self.sock.close()


class SeqpacketListener(Listener):
    def __init__(self, url: str, addr: ListenAddress, sink: FrameSink, mtu: int) -> None:
        self.kind = "bess"
        self.url = url
        self.links = set()
        self._sink = sink
        self._mtu = mtu
        self._count = 0
        self._sock, self._bound = bind_unix(addr, socket.SOCK_SEQPACKET)
        try:
            self._sock.listen(64)
        except BaseException:
            self._close_socket()
            raise
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._on_accept)
        log.info("bess: listening on %s", url)

    @property
    def address(self) -> Any:
        return self._sock.getsockname() if self._sock is not None else None

    def _on_accept(self) -> None:
        assert self._sock is not None
        for _ in range(16):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep listening
                log.error("bess: accept on %s failed: %s", self.url, exc)
                return
            self._count += 1
            link = SeqpacketLink(
                conn, self._sink, self._mtu, f"bess:{self.url}#{self._count}", self.links.discard
            )
            if not link.closed:
                self.links.add(link)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None  # type: ignore[assignment]
        if self._bound is not None:
            self._bound.unlink()
            self._bound = None

    def close(self) -> None:
        if self._sock is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._close_socket()
        for link in list(self.links):
            link.close()


# -- vfkit (SOCK_DGRAM) ---------------------------------------------------------


class DatagramLink(PacketLink):
    """One peer address on the shared vfkit socket."""

    def __init__(
        self,
        listener: DatagramListener,
        peer: Any,
        sink: FrameSink,
        mtu: int,
        name: str,
        on_close: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(sink, mtu, name, on_close)
        self.peer = peer
        self._listener = listener
        self._timer: asyncio.TimerHandle | None = None
        self._open()

    def _send_now(self, frame: bytes) -> bool:
        sock = self._listener.sock
        if sock is None:
            raise OSError(errno.ENOTCONN, "listener closed")
        try:
            sock.sendto(frame, self.peer)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(DGRAM_RETRY, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._flush()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class DatagramListener(Listener):
    def __init__(self, url: str, addr: ListenAddress, sink: FrameSink, mtu: int) -> None:
        self.kind = "vfkit"
        self.url = url
        self.links = set()
        self.peers: dict[Any, DatagramLink] = {}
        self._sink = sink
        self._mtu = mtu
        self._count = 0
        self._anonymous = 0
        self.sock: socket.socket | None
        self.sock, self._bound = bind_unix(addr, socket.SOCK_DGRAM)
        set_dgram_buffers(self.sock)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)
        log.info("vfkit: listening on %s", url)

    @property
    def address(self) -> Any:
        return self.sock.getsockname() if self.sock is not None else None

    def _new_link(self, peer: Any) -> DatagramLink | None:
        if len(self.peers) >= MAX_DGRAM_PEERS:
            log.warning("vfkit: %s: too many peers; ignoring %r", self.url, peer)
            return None
        self._count += 1
        link = DatagramLink(
            self, peer, self._sink, self._mtu, f"vfkit:{self.url}#{self._count}", self._forget
        )
        self.peers[peer] = link
        self.links.add(link)
        return link

    def _forget(self, link: DatagramLink) -> None:
        self.links.discard(link)
        if self.peers.get(link.peer) is link:
            del self.peers[link.peer]

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        size = max_frame_for(self._mtu) + 1
        peers = self.peers
        deliver = self._sink.frame_received
        for _ in range(READ_BATCH):
            try:
                data, peer = sock.recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("vfkit: %s: receive failed: %s", self.url, exc)
                return
            if not peer:
                self._anonymous += 1
                if self._anonymous == 1:
                    log.warning(
                        "vfkit: %s: datagram from an unbound socket; the VM side must bind "
                        "its own path so frames can be sent back",
                        self.url,
                    )
                continue
            link = peers.get(peer)
            if data == VFKIT_MAGIC:
                if link is not None:
                    log.info("%s: peer sent a new greeting; starting a fresh link", link.name)
                    link.close()
                self._new_link(peer)
                continue
            if link is None:
                link = self._new_link(peer)
                if link is None:
                    continue
            if link._check(len(data)):
                deliver(link, data)
                if self.sock is None:
                    return

    def close(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())
        for link in list(self.links):
            link.close()
        self.sock = None
        sock.close()
        if self._bound is not None:
            self._bound.unlink()
            self._bound = None


async def start_bess_listener(
    url: str, addr: ListenAddress, sink: FrameSink, mtu: int
) -> SeqpacketListener:
    return SeqpacketListener(url, addr, sink, mtu)


async def start_vfkit_listener(
    url: str, addr: ListenAddress, sink: FrameSink, mtu: int
) -> DatagramListener:
    return DatagramListener(url, addr, sink, mtu)


__all__ = [
    "DatagramLink",
    "DatagramListener",
    "SeqpacketLink",
    "SeqpacketListener",
    "start_bess_listener",
    "start_vfkit_listener",
]
