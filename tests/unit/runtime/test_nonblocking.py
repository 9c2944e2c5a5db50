"""nonblocking_socket: the descriptor itself is non-blocking, and Python knows it."""

from __future__ import annotations

import os
import socket

import pytest

from pyvpnkit.runtime import nonblocking
from pyvpnkit.runtime.nonblocking import nonblocking_socket


def test_stream_and_datagram_sockets_are_non_blocking() -> None:
    for family, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_UNIX, socket.SOCK_STREAM),
                         (socket.AF_INET, socket.SOCK_DGRAM)):
        with nonblocking_socket(family, kind) as sock:
            assert not os.get_blocking(sock.fileno())
            assert sock.gettimeout() == 0.0
            assert sock.type == kind  # the flag does not leak into the type asyncio checks



def test_without_sock_nonblock_setblocking_does_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no SOCK_NONBLOCK: the socket must still come out non-blocking."""
    monkeypatch.setattr(nonblocking, "_NONBLOCK", 0)
    with nonblocking.nonblocking_socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert not os.get_blocking(sock.fileno())
        assert sock.gettimeout() == 0.0
