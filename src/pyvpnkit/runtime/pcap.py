"""Classic libpcap capture of every frame crossing the VM links.

Two consumers: a file (``--pcap``), each record flushed at once so
`tcpdump -r FILE` sees a live session; and vpnkit's live stream
(``--pcap-listen``), where every client of a unix socket gets the pcap header
and then every frame from when it connected. A client that reads slower than
the links run loses records (counted) instead of stalling the switch.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import BinaryIO

from pyvpnkit.links.sockets import listen_stream
from pyvpnkit.links.url import ListenAddress

log = logging.getLogger("pyvpnkit")

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
# Bytes a live-capture client may leave unread before its records are dropped.
MAX_CLIENT_BACKLOG = 1024 * 1024


def pcap_header(snaplen: int) -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def pcap_record(frame: bytes | memoryview, snaplen: int, ts: float | None = None) -> bytes:
    if ts is None:
        ts = time.time()
    sec = int(ts)
    usec = int((ts - sec) * 1_000_000)
    data = frame[:snaplen]
    return struct.pack("<IIII", sec, usec, len(data), len(frame)) + bytes(data)


class PcapWriter:
    def __init__(self, path: str, snaplen: int = 65535) -> None:
        self.snaplen = snaplen
        self._f: BinaryIO = open(path, "wb", buffering=0)  # noqa: SIM115 - lives with the service
        self._f.write(pcap_header(snaplen))

    def write(self, frame: bytes | memoryview, ts: float | None = None) -> None:
        self._f.write(pcap_record(frame, self.snaplen, ts))

    def tap(self, link: int, frame: bytes | memoryview, incoming: bool) -> None:
        """Engine frame tap: every frame, both directions."""
        self.write(frame)

    def close(self) -> None:
        self._f.close()


class PcapListener:
    """A unix socket serving a live pcap stream to every client (vpnkit's ``--pcap``)."""

    def __init__(self, path: str, snaplen: int = 65535) -> None:
        self.snaplen = snaplen
        self.dropped = 0
        self.clients: set[asyncio.WriteTransport] = set()
        self._sock, self._bound = listen_stream(ListenAddress("unix", path=path))
        loop = asyncio.get_running_loop()
        # The socket already listens: clients that come before the server starts wait in
        # its backlog, so the constructor can stay synchronous.
        self._serving = loop.create_task(
            loop.create_unix_server(lambda: _PcapClient(self), sock=self._sock)
        )

    def tap(self, link: int, frame: bytes | memoryview, incoming: bool) -> None:
        """Engine frame tap: every frame, both directions, to every client."""
        if not self.clients:
            return
        record = pcap_record(frame, self.snaplen)
        for transport in self.clients:
            if transport.get_write_buffer_size() > MAX_CLIENT_BACKLOG:
                self.dropped += 1
            else:
                transport.write(record)

    def close(self) -> None:
        if self._serving.done() and not self._serving.cancelled() and not self._serving.exception():
            self._serving.result().close()
        self._serving.cancel()
        self._sock.close()
        for transport in list(self.clients):
            transport.close()
        if self._bound is not None:
            self._bound.unlink()
        if self.dropped:
            log.info("live pcap: %d records dropped for slow readers", self.dropped)


class _PcapClient(asyncio.Protocol):
    def __init__(self, listener: PcapListener) -> None:
        self.listener = listener
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        transport.write(pcap_header(self.listener.snaplen))
        self.listener.clients.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.listener.clients.discard(self.transport)
