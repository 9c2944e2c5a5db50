"""Linux socket error queues (IP_RECVERR): which ICMP error hit which datagram.

With IP_RECVERR set, the kernel queues every ICMP error (and some local
errors) that concerns a socket, with the original datagram, its destination
and the address of the router that reported it. That is what lets the NATs
tell a VM's traceroute about each hop without a raw socket.

Elsewhere (macOS) the numbers below mean other options and flags, so nothing
here touches a socket off Linux: no errors are queued, and the NATs learn only
what a failed send or receive says (ECONNREFUSED, EHOSTUNREACH...).
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections import Counter
from dataclasses import dataclass

from pyvpnkit.core.nat.icmp_errors import kind_from_icmp, kind_from_icmp6

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
LINUX = sys.platform.startswith("linux")

SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

# struct sock_extended_err { u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad;
#                            u32 ee_info; u32 ee_data; } followed by the offender
# (SO_EE_OFFENDER) as a struct sockaddr_in or sockaddr_in6.
_EE = struct.Struct("=IBBBBII")
_ANC_SIZE = socket.CMSG_SPACE(_EE.size + 28)

_LOCAL_KINDS = {
    errno.ENETUNREACH: "net_unreachable",
    errno.EHOSTUNREACH: "host_unreachable",
    errno.ECONNREFUSED: "port_unreachable",
    errno.EMSGSIZE: "frag_needed",
}


@dataclass(frozen=True, slots=True)
class ExtendedError:
    """One queued error: what the kernel says about a datagram we sent."""

    errno: int
    origin: int
    type: int
    code: int
    info: int  # the path MTU for "fragmentation needed"
    offender: str | None  # the router/host that sent the ICMP error
    dst: tuple[str, int] | None  # where the failed datagram was going
    data: bytes  # the failed datagram's payload (ICMP: the echo request we sent)

    @property
    def kind(self) -> str | None:
        """The NAT error kind (see pyvpnkit.core.nat.icmp_errors.ERROR_KINDS), or None."""
        if self.origin == SO_EE_ORIGIN_ICMP:
            return kind_from_icmp(self.type, self.code)
        if self.origin == SO_EE_ORIGIN_ICMP6:
            return kind_from_icmp6(self.type, self.code)
        if self.origin == SO_EE_ORIGIN_LOCAL:
            return _LOCAL_KINDS.get(self.errno)
        return None

    @property
    def mtu(self) -> int | None:
        return self.info if self.kind == "frag_needed" and self.info else None


def parse_extended_err(
    cmsg_data: bytes, data: bytes = b"", dst: tuple[str, int] | None = None
) -> ExtendedError | None:
    """Decode an IP_RECVERR/IPV6_RECVERR control message; None when it is too short."""
    if len(cmsg_data) < _EE.size:
        return None
    ee_errno, origin, typ, code, _pad, info, _data = _EE.unpack_from(cmsg_data)
    offender = None
    off = cmsg_data[_EE.size : _EE.size + 28]
    family = struct.unpack_from("=H", off)[0] if len(off) >= 8 else None
    if family == socket.AF_INET:
        addr = off[4:8]
        if addr != b"\x00\x00\x00\x00":
            offender = socket.inet_ntoa(addr)
    elif family == socket.AF_INET6 and len(off) >= 24 and any(off[8:24]):
        offender = socket.inet_ntop(socket.AF_INET6, off[8:24])
    return ExtendedError(ee_errno, origin, typ, code, info, offender, dst, data)


def read_errqueue(sock: socket.socket, limit: int = 64) -> list[ExtendedError]:
    """Dequeue up to ``limit`` queued errors without blocking."""
    out: list[ExtendedError] = []
    if not LINUX:
        return out
    for _ in range(limit):
        try:
            data, ancdata, _flags, addr = sock.recvmsg(65536, _ANC_SIZE, MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        dst = (addr[0], addr[1]) if isinstance(addr, tuple) and len(addr) >= 2 else None
        for level, ctype, cdata in ancdata:
            if (level, ctype) in _RECVERR_CMSGS:
                err = parse_extended_err(cdata, data, dst)
                if err is not None:
                    out.append(err)
    return out


_RECVERR_CMSGS = ((socket.SOL_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR))


def enable_recverr(sock: socket.socket) -> bool:
    """Queue the socket's ICMP errors; False where the host cannot (not Linux)."""
    if not LINUX:
        return False
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
    except OSError:
        return False
    return True


def set_ttl(sock: socket.socket, current: int, ttl: int, stats: Counter[str]) -> int:
    """Give the host datagram the VM's TTL (traceroute's other half); the TTL now set.

    One setsockopt per change only; a refused one is counted in ``ttl_failed``.
    """
    if ttl == current or not 0 < ttl < 256:
        return current
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        else:
            sock.setsockopt(socket.SOL_IP, socket.IP_TTL, ttl)
    except OSError:
        stats["ttl_failed"] += 1
        return current
    return ttl


def get_ttl(sock: socket.socket) -> int:
    """The socket's TTL (IPv4) or unicast hop limit (IPv6)."""
    if sock.family == socket.AF_INET6:
        hops = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
        return hops if hops > 0 else 64
    return sock.getsockopt(socket.SOL_IP, socket.IP_TTL)


__all__ = [
    "IPV6_RECVERR",
    "get_ttl",
    "IP_RECVERR",
    "MSG_ERRQUEUE",
    "SO_EE_ORIGIN_ICMP",
    "SO_EE_ORIGIN_LOCAL",
    "ExtendedError",
    "enable_recverr",
    "set_ttl",
    "parse_extended_err",
    "read_errqueue",
]
