"""Non-blocking sockets in one system call where the OS allows.

Python's ``setblocking(False)`` is an ioctl (FIONBIO) of its own; Linux takes
SOCK_NONBLOCK in socket()'s type, which saves that call per host connection
or flow. Elsewhere (macOS) the flag is absent and setblocking does the work.
"""

from __future__ import annotations

import socket

_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


def nonblocking_socket(family: int, kind: int, proto: int = 0) -> socket.socket:
    """socket.socket(family, kind, proto), already non-blocking."""
    sock = socket.socket(family, kind | _NONBLOCK, proto)
    if not _NONBLOCK:
        sock.setblocking(False)
    return sock
