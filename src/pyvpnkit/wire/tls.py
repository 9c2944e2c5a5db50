"""The server name (SNI) of a TLS ClientHello, read without consuming the stream.

The transparent HTTPS proxy peeks at the first bytes a VM sends to port 443,
asks its upstream for ``CONNECT <name>:<port>``, then replays the same bytes.
So this parser only looks: it returns None while the ClientHello is
incomplete (it may span several records), the hello once it is whole, and
raises ParseError for anything that is not a TLS ClientHello. A name that
could not be a DNS name is refused too: it goes into a CONNECT request line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyvpnkit.wire.errors import ParseError

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0x0000
NAME_TYPE_HOST = 0x00
MAX_HELLO = 64 * 1024  # larger than any real ClientHello (post-quantum ones are ~2 KB)

_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None  # lower-case host name, None without an SNI extension


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | None:
    """The ClientHello at the start of ``data``; None if more bytes are needed."""
    view = memoryview(data)
    handshake = bytearray()
    pos = 0
    need: int | None = None  # handshake bytes the ClientHello takes, once known
    while need is None or len(handshake) < need:
        if len(view) - pos < 5:
            _check_partial_header(view, pos)
            return None
        if view[pos] != RECORD_HANDSHAKE or view[pos + 1] != 3:
            raise ParseError("not a TLS handshake record")
        size = int.from_bytes(view[pos + 3 : pos + 5], "big")
        if size == 0 or size > 16384 + 2048:
            raise ParseError(f"TLS record length {size} out of range")
        if len(view) - pos - 5 < size:
            return None
        handshake += view[pos + 5 : pos + 5 + size]
        pos += 5 + size
        if need is None and len(handshake) >= 4:
            if handshake[0] != HANDSHAKE_CLIENT_HELLO:
                raise ParseError(f"TLS handshake type {handshake[0]} is not a ClientHello")
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if need > MAX_HELLO:
                raise ParseError(f"ClientHello of {need} bytes is too long")
    return ClientHello(_server_name(memoryview(handshake)[4:need]))


def _check_partial_header(view: memoryview, pos: int) -> None:
    """Refuse a partial record header early if the bytes already there are wrong."""
    if len(view) > pos and view[pos] != RECORD_HANDSHAKE:
        raise ParseError("not a TLS handshake record")
    if len(view) > pos + 1 and view[pos + 1] != 3:
        raise ParseError("not a TLS handshake record")


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ParseError("ClientHello truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> memoryview:
        return self.take(self.uint(size))

    def left(self) -> int:
        return len(self.buf) - self.pos


def _server_name(body: memoryview) -> str | None:
    r = _Reader(body)
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # legacy_session_id
    if len(r.vector(2)) % 2:
        raise ParseError("odd cipher suites length")
    r.vector(1)  # legacy_compression_methods
    if not r.left():
        return None  # SSL 3.0 style hello without extensions
    extensions = _Reader(r.vector(2))
    while extensions.left():
        kind = extensions.uint(2)
        data = extensions.vector(2)
        if kind == EXT_SERVER_NAME:
            return _host_name(_Reader(data))
    return None


def _host_name(ext: _Reader) -> str | None:
    names = _Reader(ext.vector(2))
    while names.left():
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type != NAME_TYPE_HOST:
            continue
        try:
            text = bytes(name).decode("ascii").lower()
        except UnicodeDecodeError:
            raise ParseError("SNI host name is not ASCII") from None
        if len(text) > 253 or not _HOSTNAME.fullmatch(text):
            raise ParseError(f"SNI host name {text[:64]!r} is not a DNS name")
        return text.rstrip(".")
    return None
