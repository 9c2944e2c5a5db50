"""stdio link: u16-LE length-prefixed frames on stdin/stdout, no handshake.

This is how a parent process that already holds the VM's traffic (gvproxy's
``-listen-stdio`` style) talks to us. Before taking over fds 0 and 1 the link
duplicates them and points 0 at /dev/null and 1 at stderr, so a stray print()
anywhere in the process cannot corrupt the frame stream.
"""

from __future__ import annotations

import asyncio
import logging
import os

from pyvpnkit.links.base import FrameSink, Listener
from pyvpnkit.links.stream import StreamLink
from pyvpnkit.wire.framing import U16LE

log = logging.getLogger("pyvpnkit.links")


class _WriteSide(asyncio.Protocol):
    """Watches the output pipe: the reader on the other end going away ends the link."""

    def __init__(self, link: StreamLink) -> None:
        self.link = link

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.link.closed:
            log.info("%s: output closed: %s", self.link.name, exc)
        self.link.close()


class StdioListener(Listener):
    """Holds the single stdio link; ``wait_closed()`` returns when it ends."""

    def __init__(self, sink: FrameSink, mtu: int) -> None:
        self.kind = "stdio"
        self.url = "stdio"
        self._done = asyncio.get_running_loop().create_future()
        self.link = StreamLink(sink, mtu, "stdio", U16LE, self._link_closed)
        self.links = {self.link}

    def _link_closed(self, link: StreamLink) -> None:
        self.links.discard(link)
        if not self._done.done():
            self._done.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._done)

    def close(self) -> None:
        self.link.close()


def _take_stdio() -> tuple[int, int]:
    """Private copies of fds 0/1; the originals become /dev/null and stderr."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    os.dup2(2, 1)
    return rfd, wfd


async def open_stdio(
    sink: FrameSink, mtu: int, rfd: int | None = None, wfd: int | None = None
) -> StdioListener:
    """Start the stdio link on ``rfd``/``wfd`` (default: take over fds 0 and 1).

    The fds must be pipes, sockets or character devices, and are closed with the link.
    """
    if rfd is None or wfd is None:
        rfd, wfd = _take_stdio()
    loop = asyncio.get_running_loop()
    listener = StdioListener(sink, mtu)
    link = listener.link
    rfile = os.fdopen(rfd, "rb", buffering=0)
    wfile = os.fdopen(wfd, "wb", buffering=0)
    wtransport: asyncio.WriteTransport | None = None
    try:
        wtransport, _ = await loop.connect_write_pipe(lambda: _WriteSide(link), wfile)
        link._writer = wtransport
        await loop.connect_read_pipe(lambda: link, rfile)
    except (ValueError, PermissionError) as exc:  # a regular file or /dev/null: not pollable
        if wtransport is not None:
            wtransport.abort()
        wfile.close()
        rfile.close()
        raise OSError(f"stdio link needs pipes, sockets or ttys on stdin/stdout: {exc}") from exc
    return listener
