"""What this host's OS offers the stack: Linux's features, probed once.

`run --listen-*` and the gvproxy and vpnkit drop-ins need only POSIX sockets
and an asyncio selector, so they run on macOS too. The rest is Linux's: TAP
devices and namespaces (exec, run --netns/--tap, the slirp4netns drop-in),
IP_RECVERR's ICMP errors, ping sockets, SO_PEEK_OFF, vnet_hdr offloads,
Landlock, seccomp, inotify. Each is probed here, never assumed from the
platform's name alone, and reported by `pyvpnkit --version` and in /stats'
`platform` section; a feature that needs a missing one says so in one line.
The Linux-only modules are imported only when the host is Linux.
"""

from __future__ import annotations

import functools
import os
import platform
import selectors
import socket
import sys
from dataclasses import asdict, dataclass

from pyvpnkit.errors import SETUP_FAILED, UserError
from pyvpnkit.links.sockets import UNIX_PATH_MAX

LINUX = sys.platform.startswith("linux")
SO_PEEK_OFF = 42  # Linux's number; Python does not name it


@dataclass(frozen=True, slots=True)
class Capabilities:
    system: str  # e.g. "linux 6.1.0 x86_64"
    python: str
    selector: str  # asyncio's: epoll, kqueue, poll, select
    tap: bool  # /dev/net/tun: run --tap, and exec/--netns with namespaces
    namespaces: bool  # setns/unshare: exec, run --netns, pyvpnkit-slirp4netns
    ip_recverr: bool  # ICMP errors for UDP flows and ping sockets (traceroute)
    icmp: str  # ping (Linux ping sockets), dgram (BSD ICMP sockets), raw, or none
    so_peek_off: bool
    vnet_hdr: bool  # TAP checksum and TSO offloads (with the TAP)
    landlock: str  # "ABI N", or why not
    seccomp: bool  # libseccomp loads
    inotify: bool
    tcp_keepalive_idle: str  # the option that sets it: TCP_KEEPIDLE, TCP_KEEPALIVE (macOS), none
    unix_path_max: int  # bytes of a unix socket path, the NUL included

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def missing(self) -> list[str]:
        """The Linux features this host lacks, for one log line at start."""
        flags = {"TAP devices": self.tap, "network namespaces": self.namespaces,
                 "IP_RECVERR": self.ip_recverr, "ping sockets": self.icmp == "ping",
                 "SO_PEEK_OFF": self.so_peek_off, "vnet_hdr": self.vnet_hdr,
                 "Landlock": self.landlock.startswith("ABI"), "seccomp": self.seccomp,
                 "inotify": self.inotify}
        return [name for name, present in flags.items() if not present]

    def lines(self) -> list[str]:
        """--version's report: one line per feature."""
        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        return [
            f"platform: {self.system}, Python {self.python}, {self.selector} event loop",
            f"  TAP devices (run --tap): {yes(self.tap)}, vnet_hdr offloads: {yes(self.vnet_hdr)}",
            f"  network namespaces (exec, run --netns): {yes(self.namespaces)}",
            f"  IP_RECVERR ICMP errors: {yes(self.ip_recverr)}",
            f"  ping: {self.icmp}",
            f"  SO_PEEK_OFF: {yes(self.so_peek_off)}",
            f"  Landlock: {self.landlock}, seccomp: {yes(self.seccomp)}",
            f"  inotify: {yes(self.inotify)}",
            f"  TCP keepalive idle: {self.tcp_keepalive_idle}",
            f"  unix socket paths: up to {self.unix_path_max - 1} bytes",
        ]


def _sockopt_works(kind: int, level: int, option: int, value: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True


def _libc_has(*names: str) -> bool:
    try:
        from pyvpnkit.runtime.sysns import libc
    except OSError:
        return False
    return all(hasattr(libc, name) for name in names)


def _landlock() -> str:
    from pyvpnkit.runtime import landlock

    version, why = landlock.abi()
    return f"ABI {version}" if version else f"no ({why})"


def _seccomp() -> bool:
    from pyvpnkit.runtime import seccomp

    try:
        seccomp.load_library()
    except OSError:
        return False
    return True


@functools.cache
def has_tap() -> bool:
    return LINUX and os.path.exists("/dev/net/tun")


@functools.cache
def has_namespaces() -> bool:
    return LINUX and os.path.exists("/proc/self/ns/net") and _libc_has("setns", "unshare")


@functools.cache
def capabilities() -> Capabilities:
    """The host's capabilities, probed on the first call (a few sockets, no files written)."""
    from pyvpnkit.runtime.errqueue import IP_RECVERR
    from pyvpnkit.runtime.host_icmp import choose_mode

    selector = selectors.DefaultSelector.__name__.removesuffix("Selector").lower()
    keepalive = next((n for n in ("TCP_KEEPIDLE", "TCP_KEEPALIVE") if hasattr(socket, n)), "none")
    return Capabilities(
        system=f"{sys.platform} {platform.release()} {platform.machine()}",
        python=platform.python_version(),
        selector=selector,
        tap=has_tap(),
        namespaces=has_namespaces(),
        ip_recverr=LINUX and _sockopt_works(socket.SOCK_DGRAM, socket.IPPROTO_IP, IP_RECVERR, 1),
        icmp=choose_mode() or "none",
        so_peek_off=LINUX and _sockopt_works(socket.SOCK_STREAM, socket.SOL_SOCKET, SO_PEEK_OFF, 0),
        vnet_hdr=has_tap(),
        landlock=_landlock() if LINUX else "no (Linux only)",
        seccomp=LINUX and _seccomp(),
        inotify=LINUX and _libc_has("inotify_init1", "inotify_add_watch"),
        tcp_keepalive_idle=keepalive,
        unix_path_max=UNIX_PATH_MAX,
    )


_INSTEAD = "use run --listen-qemu, --listen-vfkit or --listen-vpnkit"


def require_namespaces(what: str) -> None:
    """Stop ``what`` with one line where network namespaces are missing (macOS)."""
    if not has_namespaces():
        raise UserError(f"{what} needs Linux network namespaces; {_INSTEAD}", SETUP_FAILED)


def require_tap(what: str) -> None:
    """Stop ``what`` with one line where TAP devices are missing (macOS)."""
    if not has_tap():
        raise UserError(f"{what} needs a Linux TAP device (/dev/net/tun); {_INSTEAD}",
                        SETUP_FAILED)


__all__ = ["Capabilities", "capabilities", "require_namespaces", "require_tap"]
