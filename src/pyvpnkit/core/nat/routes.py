"""Where a VM's packet to an outside address may go on the host.

One policy for TCP, UDP and ICMP: the host alias maps to the host's
loopback (unless --no-host-loopback), and addresses that would reach the
host's own services or flood its LAN (this-network, loopback, multicast,
broadcast, unowned addresses of our own subnet) never leave, nor do the
configured blocked prefixes (gvproxy's 169.254.0.0/16, cloud metadata).
IPv6 follows the same policy: the alias (::2 of the prefix) is the host's
[::1]; loopback, link-local, multicast, unspecified and unowned addresses of
our prefix never leave, nor does the reserved ::/8 (SIIT's ::ffff:0:0:0/96
among it).

An IPv6 address that carries an IPv4 one is judged as that IPv4 address: the
host's kernel sends IPv4-mapped (::ffff:a.b.c.d) and, through a sit tunnel,
IPv4-compatible (::a.b.c.d) addresses to the IPv4 address itself, so
[::ffff:127.0.0.1] is the host's loopback. Allowed, they go to the IPv4
verdict's address in mapped form (the flow keeps its family). NAT64's
64:ff9b::/96 may leave only when the IPv4 address it carries may.

Whoever connects for a VM asks here, the NATs and the HTTP proxy alike
(``host_address``, ``named_address``), so there is one answer per address.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from pyvpnkit.core.config import NetConfig

HOST_LOOPBACK = "127.0.0.1"
HOST_LOOPBACK6 = "::1"
HOST_LOOPBACKS: Final = frozenset({HOST_LOOPBACK, HOST_LOOPBACK6, "::ffff:" + HOST_LOOPBACK})
_MAPPED: Final = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96
_COMPAT: Final = bytes(12)  # ::/96
_NAT64: Final = bytes.fromhex("0064ff9b") + bytes(8)  # 64:ff9b::/96


def is_routable(config: NetConfig, dst: bytes) -> bool:
    """False for addresses a NAT never sends to the host network.

    This-network, loopback, multicast, reserved/broadcast and our subnet's
    broadcast address would reach the host's own services or flood its LAN.
    """
    if len(dst) == 16:
        if dst[:12] in (_MAPPED, _COMPAT, _NAT64):
            return is_routable(config, dst[12:])
        return _routable6(dst)
    first = dst[0]
    if first == 0 or first == 127 or first >= 224:
        return False
    return dst != config.subnet.broadcast_address.packed


def host_view(
    config: NetConfig, addr: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> bytes | None:
    """The address the VM sees for a host-side address, or None if it has none.

    127.0.0.1 (or ::1) is shown as the host alias; other host-side addresses
    that would make no sense to the VM (loopback, link-local, ours) have none.
    """
    if isinstance(addr, ipaddress.IPv4Address):
        if str(addr) == HOST_LOOPBACK:
            return config.host_ip if config.host_loopback else None
        if addr.is_loopback or addr.is_unspecified or config.in_subnet(addr.packed):
            return None
        return addr.packed
    v6 = config.ipv6
    if v6 is None:
        return None
    if str(addr) == HOST_LOOPBACK6:
        return v6.host_ip if config.host_loopback else None
    if not is_routable(config, addr.packed) or v6.in_subnet(addr.packed):
        return None
    return addr.packed


def nat_target(config: NetConfig, dst: bytes) -> str | None:
    """The host address gvproxy's NAT table maps a virtual IP to, if any."""
    return next((host for vip, host in config.nat if vip == dst), None)


def route(config: NetConfig, dst: bytes) -> tuple[str | None, str | None, bytes | None]:
    """Where a VM packet to ``dst`` goes: (host address, None, None) to forward,
    (None, error kind, ICMP source) to refuse, or (None, None, None) to drop."""
    if len(dst) == 16:
        return _route6(config, dst)
    if dst == config.host_ip:
        if config.host_loopback:
            return HOST_LOOPBACK, None, None
        return None, config.no_host_loopback, dst
    if config.nat:
        host = nat_target(config, dst)
        if host is not None:
            return host, None, None
    if not is_routable(config, dst):
        return None, None, None
    if config.blocked and _blocked(config.blocked, dst):
        return None, "admin_prohibited", dst
    if dst == config.gateway_ip or dst == config.dns_ip:
        return None, "port_unreachable", dst
    if config.in_subnet(dst):
        # An address no VM owns: what a router says when ARP fails.
        return None, "host_unreachable", config.gateway_ip
    return str(ipaddress.IPv4Address(dst)), None, None


def _blocked(prefixes: tuple[ipaddress.IPv4Network, ...], dst: bytes) -> bool:
    addr = int.from_bytes(dst, "big")
    return any(addr & int(p.netmask) == int(p.network_address) for p in prefixes)


def _routable6(dst: bytes) -> bool:
    """For an address that carries no IPv4 one (those are judged as IPv4 first)."""
    addr = ipaddress.IPv6Address(dst)
    return not (
        dst[0] == 0  # ::/8, reserved: loopback, unspecified, SIIT's ::ffff:0:0:0/96
        or addr.is_link_local or addr.is_multicast or addr.is_site_local
    )


def host_address(config: NetConfig, dst: bytes) -> str | None:
    """The host address a connection for a VM to ``dst`` uses, or None if refused."""
    return route(config, dst)[0]


def named_address(text: str) -> bytes | None:
    """The address ``text`` names without a resolver's help, or None for a real name.

    Every spelling a host's resolver (or an upstream proxy using it) takes as
    an address: IPv6 in any case, with or without a zone id; IPv4 in
    inet_aton's forms (127.1, 2130706433, 0x7f.0.0.1, 0177.0.0.1); and
    localhost names, which are the loopback whatever DNS says (RFC 6761).
    """
    text = text.strip("[]")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0]).packed
        except ValueError:
            return None
    name = text.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return bytes((127, 0, 0, 1))
    return _inet_aton(text)


def _inet_aton(text: str) -> bytes | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part[0] == "0":
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10) if part.isdigit() else -1)
        except ValueError:
            return None
    *head, last = values
    if any(not 0 <= v <= 255 for v in head) or not 0 <= last < 1 << (8 * (5 - len(values))):
        return None
    return bytes(head) + last.to_bytes(5 - len(values), "big")


def _route6(config: NetConfig, dst: bytes) -> tuple[str | None, str | None, bytes | None]:
    head = dst[:12]
    if head == _MAPPED or head == _COMPAT:
        return _carried(config, dst, route(config, dst[12:]))
    if head == _NAT64:
        carried = route(config, dst[12:])
        if carried[0] == str(ipaddress.IPv4Address(dst[12:])):
            return str(ipaddress.IPv6Address(dst)), None, None
        return _carried(config, dst, (None, carried[1], carried[2]))
    layout = config.ipv6
    if layout is not None and dst == layout.host_ip:
        if config.host_loopback:
            return HOST_LOOPBACK6, None, None
        return None, config.no_host_loopback, dst
    if not _routable6(dst):
        return None, None, None
    if layout is not None:
        if dst == layout.gateway_ip:
            return None, "port_unreachable", dst
        if layout.in_subnet(dst):
            return None, "host_unreachable", layout.gateway_ip
    return str(ipaddress.IPv6Address(dst)), None, None


def _carried(
    config: NetConfig, dst: bytes, verdict: tuple[str | None, str | None, bytes | None]
) -> tuple[str | None, str | None, bytes | None]:
    """The IPv4 verdict for the address ``dst`` carries, spoken in IPv6."""
    host, kind, source = verdict
    if host is not None:
        return "::ffff:" + host, None, None
    if kind is None:
        return None, None, None
    if source != dst[12:] and config.ipv6 is not None:  # the gateway answered for the subnet
        return None, kind, config.ipv6.gateway_ip
    return None, kind, dst
