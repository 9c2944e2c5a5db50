"""A foreign host for the stack's Python: Linux-only OS features hidden (test-only).

The tests that run pyvpnkit as a Mac would put this directory on the stack
process's PYTHONPATH (tests/integration/netenv.stack_python). Python then
imports this file at start-up, before any of pyvpnkit, and these go missing:

- ``select.epoll``: asyncio's selector falls back (poll here, kqueue on a Mac);
- Linux-only socket constants (``SOCK_NONBLOCK``/``SOCK_CLOEXEC``, ``MSG_ERRQUEUE``,
  ``TCP_KEEPIDLE``, ``TCP_QUICKACK``, ``AF_PACKET``, ``AF_VSOCK``...), and the Linux-only
  options behind the numbers Python does not name (``IP_RECVERR``, ``SO_PEEK_OFF``,
  ``IP_MTU_DISCOVER``, ``ICMP_FILTER``): setsockopt refuses them, recvmsg refuses
  ``MSG_ERRQUEUE``. ``TCP_KEEPALIVE`` (macOS's name for the idle time) is defined;
  it has ``TCP_KEEPIDLE``'s number here, so the code that falls back to it runs for real;
- socket() flags in the type, AF_UNIX ``SOCK_SEQPACKET``, and Linux's ping sockets
  (macOS's ``SOCK_DGRAM``/``IPPROTO_ICMP`` sockets behave as raw ones: see host_icmp);
- unix socket paths of 104 bytes or more (macOS's ``sun_path`` is 104 bytes with the NUL);
- /proc, /sys and /dev/net (so /dev/net/tun);
- Linux-only ``os``, ``signal`` and ``fcntl`` functions and constants;
- libseccomp, and libc's Linux-only symbols (setns, unshare, prctl, mallopt, inotify...).

It hides OS features, never pyvpnkit's modules, so it holds whatever the modules
are called. What it cannot show: kqueue, macOS's own socket semantics, Homebrew's Python.
"""

from __future__ import annotations

import builtins
import ctypes
import ctypes.util
import errno
import fcntl
import io
import os
import select
import signal
import socket
import sys

# -- the event loop: no epoll ---------------------------------------------------------

for _name in [n for n in dir(select) if n.lower().startswith("epoll")]:
    delattr(select, _name)
if "selectors" in sys.modules:  # chosen before us: choose again
    _selectors = sys.modules["selectors"]
    _selectors.DefaultSelector = _selectors.PollSelector  # type: ignore[attr-defined]


# -- names the modules do not have on macOS ----------------------------------------------

def _hide(module: object, names: list[str], prefixes: tuple[str, ...] = ()) -> None:
    for name in list(vars(module)):
        if name in names or (prefixes and name.startswith(prefixes)):
            delattr(module, name)


_LINUX_SOCKET = [
    "SOCK_NONBLOCK", "SOCK_CLOEXEC", "MSG_ERRQUEUE", "MSG_CONFIRM", "MSG_MORE",
    "MSG_CMSG_CLOEXEC", "MSG_NOSIGNAL", "MSG_FASTOPEN",
    "AF_PACKET", "AF_NETLINK", "AF_VSOCK", "AF_ALG", "AF_CAN", "AF_TIPC", "AF_RDS",
    "AF_QIPCRTR", "AF_BLUETOOTH", "AF_BRIDGE", "AF_KEY", "AF_SECURITY",
    "SO_BINDTODEVICE", "SO_MARK", "SO_PASSCRED", "SO_PEERCRED", "SO_PASSSEC", "SO_PEERSEC",
    "SO_PRIORITY", "SO_DOMAIN", "SO_PROTOCOL", "SO_INCOMING_CPU",
    "TCP_QUICKACK", "TCP_KEEPIDLE", "TCP_CORK", "TCP_INFO", "TCP_USER_TIMEOUT",
    "TCP_CONGESTION", "TCP_DEFER_ACCEPT", "TCP_LINGER2", "TCP_SYNCNT", "TCP_WINDOW_CLAMP",
    "IP_TRANSPARENT", "IP_BIND_ADDRESS_NO_PORT", "IP_RECVERR", "IPV6_RECVERR",
    "IP_MTU_DISCOVER", "IP_MTU", "IPV6_MTU_DISCOVER",
]
_TCP_KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", 4)
_SOCK_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_hide(socket, _LINUX_SOCKET, ("SO_VM_", "SO_J1939_", "CAN_", "NETLINK_", "PF_CAN",
                              "VMADDR_", "IOCTL_VM_", "ALG_", "TIPC_", "RDS_", "PACKET_"))
socket.TCP_KEEPALIVE = _TCP_KEEPIDLE  # type: ignore[attr-defined]

_hide(os, ["pidfd_open", "eventfd", "eventfd_read", "eventfd_write", "memfd_create", "splice",
           "copy_file_range", "getrandom", "pipe2", "posix_fallocate", "sched_setaffinity",
           "sched_getaffinity", "O_PATH", "O_TMPFILE", "O_DIRECT", "unshare", "setns"],
      ("EFD_", "MFD_", "SPLICE_F_", "GRND_", "CLONE_"))
_hide(signal, ["pidfd_send_signal", "sigtimedwait", "sigwaitinfo"])
_hide(fcntl, ["F_SETPIPE_SZ", "F_GETPIPE_SZ", "F_NOTIFY", "F_SETLEASE", "F_GETLEASE",
              "F_ADD_SEALS", "F_GET_SEALS"], ("F_OFD_", "F_SEAL_", "DN_"))


# -- socket behaviour ---------------------------------------------------------------------

# (level, option) pairs only Linux has; Python 3.11 names few of them.
_LINUX_OPTIONS = {
    (socket.IPPROTO_IP, 10),  # IP_MTU_DISCOVER
    (socket.IPPROTO_IP, 11),  # IP_RECVERR
    (socket.IPPROTO_IPV6, 23),  # IPV6_MTU_DISCOVER
    (socket.IPPROTO_IPV6, 25),  # IPV6_RECVERR
    (socket.SOL_SOCKET, 42),  # SO_PEEK_OFF
    (socket.SOL_SOCKET, 25),  # SO_BINDTODEVICE
    (socket.IPPROTO_TCP, 12),  # TCP_QUICKACK
    (socket.IPPROTO_TCP, 18),  # TCP_USER_TIMEOUT
    (255, 1),  # SOL_RAW, ICMP_FILTER
}
_MSG_ERRQUEUE = 0x2000
SUN_PATH = 104  # bytes, with the terminating NUL
_ICMP = (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6)


def _check_unix_path(sock: socket.socket, address: object) -> None:
    if sock.family != socket.AF_UNIX or not isinstance(address, (str, bytes)):
        return
    raw = os.fsencode(address)
    if raw and raw[0] != 0 and len(raw) >= SUN_PATH:
        raise OSError("AF_UNIX path too long")  # Python's own words when sun_path is short


class _ForeignSocket(socket.socket):
    """socket.socket as on macOS: no type flags, no unix SOCK_SEQPACKET, no Linux options."""

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1,
                 fileno: int | None = None) -> None:
        if fileno is None:
            if type != -1 and type & _SOCK_FLAGS:
                raise OSError(errno.EINVAL, "Invalid argument")
            if family == socket.AF_UNIX and type == socket.SOCK_SEQPACKET:
                raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
            if type == socket.SOCK_DGRAM and proto in _ICMP:  # Linux's ping sockets
                raise OSError(errno.EACCES, "Permission denied")
        super().__init__(family, type, proto, fileno)

    def bind(self, address: object) -> None:  # type: ignore[override]
        _check_unix_path(self, address)
        super().bind(address)  # type: ignore[arg-type]

    def connect(self, address: object) -> None:  # type: ignore[override]
        _check_unix_path(self, address)
        super().connect(address)  # type: ignore[arg-type]

    def connect_ex(self, address: object) -> int:  # type: ignore[override]
        _check_unix_path(self, address)
        return super().connect_ex(address)  # type: ignore[arg-type]

    def setsockopt(self, level: int, optname: int, *value: object) -> None:  # type: ignore[override]
        if (level, optname) in _LINUX_OPTIONS:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        super().setsockopt(level, optname, *value)  # type: ignore[call-overload]

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0):  # type: ignore[no-untyped-def]
        if flags & _MSG_ERRQUEUE:
            raise OSError(errno.EINVAL, "Invalid argument")
        return super().recvmsg(bufsize, ancbufsize, flags)


socket.socket = _ForeignSocket  # type: ignore[misc]
socket.SocketType = _ForeignSocket  # type: ignore[misc]


# -- the file system: no /proc, /sys, /dev/net -----------------------------------------------

_HIDDEN = ("/proc", "/sys", "/dev/net")


def _hidden(path: object) -> bool:
    if isinstance(path, int):
        return False
    try:
        text = os.fsdecode(os.fspath(path))  # type: ignore[arg-type]
    except TypeError:
        return False
    text = os.path.normpath(text)
    return any(text == top or text.startswith(top + "/") for top in _HIDDEN)


def _guard(func):  # type: ignore[no-untyped-def]
    def guarded(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if _hidden(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return func(path, *args, **kwargs)

    guarded.__name__ = func.__name__
    return guarded


builtins.open = io.open = _guard(io.open)  # type: ignore[assignment]
for _name in ("open", "stat", "lstat", "listdir", "scandir", "access", "readlink", "statvfs",
              "chdir", "mkdir"):
    setattr(os, _name, _guard(getattr(os, _name)))


# -- C libraries: no libseccomp, no Linux-only libc symbols ----------------------------------

_LINUX_SYMBOLS = {
    "setns", "unshare", "prctl", "mallopt", "mount", "umount2", "capget", "capset",
    "pivot_root", "syscall", "inotify_init", "inotify_init1", "inotify_add_watch",
    "inotify_rm_watch", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
    "signalfd", "timerfd_create", "eventfd", "pidfd_open", "clone3",
}
_find_library = ctypes.util.find_library


def _foreign_find_library(name: str) -> str | None:
    return None if name == "seccomp" else _find_library(name)


class _ForeignCDLL(ctypes.CDLL):
    def __init__(self, name: str | None, *args: object, **kwargs: object) -> None:
        if name is not None and "seccomp" in os.fspath(name):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        super().__init__(name, *args, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name in _LINUX_SYMBOLS:
            raise AttributeError(f"{self._name}: undefined symbol: {name}")
        return super().__getattr__(name)

    def __getitem__(self, name: str):  # type: ignore[no-untyped-def,override]
        if name in _LINUX_SYMBOLS:
            raise AttributeError(f"{self._name}: undefined symbol: {name}")
        return super().__getitem__(name)


ctypes.util.find_library = _foreign_find_library
ctypes.CDLL = _ForeignCDLL  # type: ignore[misc]
ctypes.cdll = ctypes.LibraryLoader(_ForeignCDLL)
