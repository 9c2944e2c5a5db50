"""Where a VM's packet to an outside address may go on the host.

One policy for TCP, UDP and ICMP: the host alias maps to the host's
loopback (unless --no-host-loopback), and addresses that would reach the
host's own services or flood its LAN (this-network, loopback, multicast,
broadcast, unowned addresses of our own subnet) never leave, nor do the
configured blocked prefixes (gvproxy's 169.254.0.0/16, cloud metadata).
IPv6 follows the same policy: the alias (::2 of the prefix) is the host's
[::1]; loopback, link-local, multicast, unspecified, IPv4-mapped and unowned
addresses of our prefix never leave.
"""

from __future__ import annotations

import ipaddress

from pyvpnkit.core.config import NetConfig

HOST_LOOPBACK = "127.0.0.1"
HOST_LOOPBACK6 = "::1"


def is_routable(config: NetConfig, dst: bytes) -> bool:
    """False for addresses a NAT never sends to the host network.

    This-network, loopback, multicast, reserved/broadcast and our subnet's
    broadcast address would reach the host's own services or flood its LAN.
    """
    if len(dst) == 16:
        return _routable6(dst)
    first = dst[0]
    if first == 0 or first == 127 or first >= 224:
        return False
    return dst != config.subnet.broadcast_address.packed


def route(config: NetConfig, dst: bytes) -> tuple[str | None, str | None, bytes | None]:
    """Where a VM packet to ``dst`` goes: (host address, None, None) to forward,
    (None, error kind, ICMP source) to refuse, or (None, None, None) to drop."""
    if len(dst) == 16:
        return _route6(config, dst)
    if dst == config.host_ip:
        if config.host_loopback:
            return HOST_LOOPBACK, None, None
        return None, config.no_host_loopback, dst
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
    addr = ipaddress.IPv6Address(dst)
    return not (
        addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified
        or addr.ipv4_mapped is not None or addr.is_site_local
    )


def _route6(config: NetConfig, dst: bytes) -> tuple[str | None, str | None, bytes | None]:
    layout = config.ipv6
    if layout is None:
        return None, None, None
    if dst == layout.host_ip:
        if config.host_loopback:
            return HOST_LOOPBACK6, None, None
        return None, config.no_host_loopback, dst
    if not _routable6(dst):
        return None, None, None
    if dst == layout.gateway_ip:
        return None, "port_unreachable", dst
    if layout.in_subnet(dst):
        return None, "host_unreachable", layout.gateway_ip
    return str(ipaddress.IPv6Address(dst)), None, None
