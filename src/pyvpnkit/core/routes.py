"""Where a VM's packet to an outside address may go on the host.

One policy for TCP, UDP and ICMP: the host alias maps to the host's
loopback (unless --no-host-loopback), and addresses that would reach the
host's own services or flood its LAN (this-network, loopback, multicast,
broadcast, unowned addresses of our own subnet) never leave, nor do the
configured blocked prefixes (gvproxy's 169.254.0.0/16, cloud metadata).
"""

from __future__ import annotations

import ipaddress

from pyvpnkit.core.config import NetConfig

HOST_LOOPBACK = "127.0.0.1"


def is_routable(config: NetConfig, dst: bytes) -> bool:
    """False for addresses a NAT never sends to the host network.

    This-network, loopback, multicast, reserved/broadcast and our subnet's
    broadcast address would reach the host's own services or flood its LAN.
    """
    first = dst[0]
    if first == 0 or first == 127 or first >= 224:
        return False
    return dst != config.subnet.broadcast_address.packed


def route(config: NetConfig, dst: bytes) -> tuple[str | None, str | None, bytes | None]:
    """Where a VM packet to ``dst`` goes: (host address, None, None) to forward,
    (None, error kind, ICMP source) to refuse, or (None, None, None) to drop."""
    if dst == config.host_ip:
        if config.host_loopback:
            return HOST_LOOPBACK, None, None
        return None, "admin_prohibited", dst
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
