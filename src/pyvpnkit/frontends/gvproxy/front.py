"""gvproxy's API sockets: HTTP for the usual routes, hijacked connections for /tunnel and /connect.

gvproxy's /tunnel and /connect take over the HTTP connection itself: the
server answers `OK` without a status line (/tunnel) or nothing at all
(/connect), and the rest of the stream is a TCP relay into the virtual
network or a VM link. A client may send its first bytes right behind the
request, so this front reads each connection's request head itself: a
hijack route gets the connection with whatever followed the head; any other
request is handed, bytes and transport, to the aiohttp server unchanged.
Only the first request of a connection can be a hijack, as with Go clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pyvpnkit.links.sockets import BoundUnixPath, listen_stream
from pyvpnkit.links.url import parse_listen_url

log = logging.getLogger("pyvpnkit.frontends.gvproxy")

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0  # gvproxy's ReadTimeout

# A hijack handler gets the transport (reading paused), the query and the bytes after the head.
Hijack = Callable[[asyncio.Transport, dict[str, str], bytes], None]


class _Sniff(asyncio.Protocol):
    """Reads one request head, then hands the connection on."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._fail(431, "request header too large")
            return
        if self.timer is not None:
            self.timer.cancel()
        head, rest = bytes(self.buf[: end + 4]), bytes(self.buf[end + 4 :])
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        target = urlsplit(parts[1].decode("latin-1")) if len(parts) == 3 else None
        hijack = self.front.hijacks.get(target.path) if target is not None else None
        if hijack is None or target is None:
            self._to_http(head + rest)
            return
        # Go's net/http sends a Content-Length: 0 body with these POSTs; nothing to skip.
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        self.transport.pause_reading()
        try:
            hijack(self.transport, query, rest)
        except Exception:
            log.exception("API %s failed", target.path)
            self.transport.abort()

    def _to_http(self, data: bytes) -> None:
        assert self.transport is not None
        proto = self.front.http_factory()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(data)

    def _fail(self, status: int, reason: str) -> None:
        assert self.transport is not None
        self.transport.write(http_error(status, reason))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


def http_error(status: int, reason: str) -> bytes:
    body = (reason.rstrip("\n") + "\n").encode()
    return (f"HTTP/1.1 {status} Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def detach_socket(transport: asyncio.Transport) -> socket.socket:
    """The connection as a plain socket, owned by the caller; the transport lets go of it."""
    sock = transport.get_extra_info("socket")
    fd = os.dup(sock.fileno())
    transport.abort()  # closes only the transport's descriptor; ours stays connected
    return socket.socket(fileno=fd)


class Front:
    """One gvproxy API endpoint (unix://, tcp:// or vsock://)."""

    def __init__(self, url: str, http_factory: Callable[[], Any], hijacks: dict[str, Hijack]):
        self.url = url
        self.http_factory = http_factory
        self.hijacks = hijacks
        self._server: asyncio.AbstractServer | None = None
        self._bound: BoundUnixPath | None = None

    async def start(self) -> None:
        addr = parse_listen_url(self.url, "qemu")
        sock, self._bound = listen_stream(addr)
        if self._bound is not None:
            os.chmod(self._bound.path, stat.S_IRUSR | stat.S_IWUSR)  # no authentication
        if addr.scheme == "tcp" and addr.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("the API has no authentication and listens on %s", self.url)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Sniff(self), sock=sock)
        log.info("API listening on %s", self.url)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._bound is not None:
            self._bound.unlink()
            self._bound = None
