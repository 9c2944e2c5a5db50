"""Listen URLs, spelled as gvproxy spells them, and which link kinds accept them.

``unix:///PATH`` and ``tcp://HOST:PORT`` and ``vsock://PORT`` (also
``vsock://:PORT`` or ``vsock://CID:PORT``) carry byte streams (qemu or vpnkit
framing); ``unixpacket:///PATH`` is SOCK_SEQPACKET (bess); ``unixgram:///PATH``
is SOCK_DGRAM (vfkit); ``stdio`` (or ``stdio://``, ``-``) is the process's own
stdin/stdout. A unix path starting with ``@`` names a Linux abstract socket.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

STREAM_SCHEMES = frozenset({"unix", "tcp", "vsock"})
SCHEMES_FOR_KIND = {
    "qemu": STREAM_SCHEMES,
    "vpnkit": STREAM_SCHEMES,
    "bess": frozenset({"unixpacket"}),
    "vfkit": frozenset({"unixgram"}),
    "stdio": frozenset({"stdio"}),
}
VMADDR_CID_ANY = 0xFFFFFFFF


class ListenURLError(ValueError):
    """A listen URL that cannot be used (bad syntax, or wrong for the link kind)."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    scheme: str
    path: str | None = None  # unix*: filesystem path, or "\0name" for abstract sockets
    host: str | None = None  # tcp
    port: int | None = None  # tcp, vsock
    cid: int | None = None  # vsock

    @property
    def is_abstract(self) -> bool:
        return self.path is not None and self.path.startswith("\0")

    def sockaddr(self) -> str | tuple[str, int] | tuple[int, int]:
        if self.scheme in ("unix", "unixpacket", "unixgram"):
            assert self.path is not None
            return self.path
        if self.scheme == "tcp":
            assert self.host is not None and self.port is not None
            return (self.host, self.port)
        if self.scheme == "vsock":
            assert self.cid is not None and self.port is not None
            return (self.cid, self.port)
        raise ListenURLError(f"{self.scheme} has no socket address")


def parse_listen_url(url: str, kind: str | None = None) -> ListenAddress:
    """Parse ``url``; when ``kind`` is given also check the kind can use it."""
    text = url.strip()
    if text in ("stdio", "stdio:", "stdio://", "-"):
        addr = ListenAddress("stdio")
    else:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme in ("unix", "unixpacket", "unixgram"):
            path = unquote(parts.netloc + parts.path)
            if not path:
                raise ListenURLError(f"{url!r}: no socket path (use {scheme}:///absolute/path)")
            if path.startswith("@"):
                path = "\0" + path[1:]
            addr = ListenAddress(scheme, path=path)
        elif scheme == "tcp":
            try:
                port = parts.port
            except ValueError as exc:
                raise ListenURLError(f"{url!r}: {exc}") from None
            if port is None or not parts.hostname:
                raise ListenURLError(f"{url!r}: expected tcp://HOST:PORT")
            addr = ListenAddress("tcp", host=parts.hostname, port=port)
        elif scheme == "vsock":
            addr = _parse_vsock(url, parts.netloc)
        elif not scheme:
            raise ListenURLError(f"{url!r}: no scheme (unix://, tcp://, vsock://, ...)")
        else:
            raise ListenURLError(f"{url!r}: unknown scheme {scheme!r}")
    if kind is not None:
        allowed = SCHEMES_FOR_KIND.get(kind)
        if allowed is None:
            raise ListenURLError(f"unknown link kind {kind!r} (one of {sorted(SCHEMES_FOR_KIND)})")
        if addr.scheme not in allowed:
            raise ListenURLError(
                f"{url!r}: a {kind} link needs {' or '.join(sorted(allowed))}, not {addr.scheme}"
            )
    return addr


def _parse_vsock(url: str, netloc: str) -> ListenAddress:
    cid_text, sep, port_text = netloc.rpartition(":")
    if not sep:
        cid_text, port_text = "", netloc
    try:
        port = int(port_text)
        cid = VMADDR_CID_ANY if cid_text in ("", "*") else int(cid_text)
    except ValueError:
        raise ListenURLError(f"{url!r}: expected vsock://PORT or vsock://CID:PORT") from None
    if not (0 <= port <= 0xFFFFFFFF and 0 <= cid <= 0xFFFFFFFF):
        raise ListenURLError(f"{url!r}: CID and port must fit in 32 bits")
    return ListenAddress("vsock", port=port, cid=cid)


def vsock_available() -> bool:
    """Whether this host can make AF_VSOCK sockets (Linux with the vsock modules)."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return False
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True
