"""The host-side source address of outbound flows (slirp4netns --outbound-addr[6]).

A flow's host socket is bound to the chosen address before it connects or
sends, so the far end sees that address, and the kernel routes by it (a
VPN's address sends the flow through the VPN). An interface name stands for
its first address of the family, looked up once at start, as slirp4netns
does with getifaddrs.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915
IF_INET6 = "/proc/net/if_inet6"


def interface_address(name: str, family: int) -> str | None:
    """The first IPv4 (family 4) or IPv6 (6) address of interface NAME, or None."""
    if family == 4:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                ifr = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                  struct.pack("16s16x", name.encode()[:15]))
            except OSError:
                return None
        return socket.inet_ntoa(ifr[20:24])
    try:
        with open(IF_INET6, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:  # address, index, prefix length, scope, flags, name
        fields = line.split()
        if len(fields) == 6 and fields[5] == name:
            return str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return None


def bind_source(sock: socket.socket, outbound: tuple[str, str]) -> None:
    """Bind SOCK to the configured source of its family, if any (port chosen by the kernel)."""
    addr = outbound[1] if sock.family == socket.AF_INET6 else outbound[0]
    if addr:
        sock.bind((addr, 0))
