"""Listening sockets for the link listeners: unix paths, TCP, AF_VSOCK.

Unix socket files are created mode 0660 (owner and group: the VM runner is often
a different user in a shared group, e.g. libvirt's qemu user), a stale socket
file left by a crashed run is removed before bind (but a live one, or a
non-socket file, is an error), and the file is unlinked on close only if it
is still the one we bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys

from pyvpnkit.links.url import ListenAddress

SOCKET_MODE = 0o660
LISTEN_BACKLOG = 64
# Room for bursts on datagram sockets (gvproxy uses the same sizes for vfkit).
DGRAM_SNDBUF = 1 * 1024 * 1024
DGRAM_RCVBUF = 4 * 1024 * 1024
# sun_path's size, the terminating NUL included: Linux's is 108, macOS's and the BSDs' 104.
UNIX_PATH_MAX = 108 if sys.platform.startswith("linux") else 104


class BoundUnixPath:
    """Remembers which inode we bound so close() never unlinks someone else's socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        st = os.stat(path)
        self._ident = (st.st_dev, st.st_ino)

    def unlink(self) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)


def remove_stale_unix(path: str, sock_type: int = socket.SOCK_STREAM) -> None:
    """The one stale-socket rule: unlink a socket file nobody listens on.

    A non-socket file is FileExistsError; a socket someone answers on (or that
    is of another type, or has a full backlog) is EADDRINUSE.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, sock_type)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody is bound to it any more: left over from a run that crashed.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        # EPROTOTYPE (a live socket of another type), a full backlog, ...
        raise OSError(errno.EADDRINUSE, f"socket in use ({exc.strerror or exc})", path) from exc
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process is listening on", path)


def bind_unix(addr: ListenAddress, sock_type: int) -> tuple[socket.socket, BoundUnixPath | None]:
    """A bound (not yet listening) AF_UNIX socket of ``sock_type``."""
    assert addr.path is not None
    path = addr.path
    if not addr.is_abstract:
        if len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise OSError(errno.ENAMETOOLONG,
                          f"unix socket path longer than {UNIX_PATH_MAX - 1} bytes", path)
        remove_stale_unix(path, sock_type)
    sock = socket.socket(socket.AF_UNIX, sock_type)
    try:
        sock.bind(path)
        bound = None
        if not addr.is_abstract:
            os.chmod(path, SOCKET_MODE)
            bound = BoundUnixPath(path)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock, bound


def listen_stream(addr: ListenAddress) -> tuple[socket.socket, BoundUnixPath | None]:
    """A listening SOCK_STREAM socket for unix://, tcp:// or vsock://."""
    if addr.scheme == "unix":
        sock, bound = bind_unix(addr, socket.SOCK_STREAM)
    elif addr.scheme == "tcp":
        assert addr.host is not None and addr.port is not None
        infos = socket.getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        bound = None
    elif addr.scheme == "vsock":
        sock = vsock_socket()
        try:
            sock.bind(addr.sockaddr())
        except BaseException:
            sock.close()
            raise
        bound = None
    else:
        raise ValueError(f"{addr.scheme} is not a stream transport")
    try:
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        if bound is not None:
            bound.unlink()
        raise
    sock.setblocking(False)
    return sock, bound


def vsock_socket() -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError(errno.EAFNOSUPPORT, "AF_VSOCK is not supported on this platform")
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(
            exc.errno,
            "AF_VSOCK is unavailable on this host (is the vsock/vhost_vsock module loaded?)",
        ) from exc


def set_dgram_buffers(sock: socket.socket) -> None:
    for opt, size in ((socket.SO_SNDBUF, DGRAM_SNDBUF), (socket.SO_RCVBUF, DGRAM_RCVBUF)):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
