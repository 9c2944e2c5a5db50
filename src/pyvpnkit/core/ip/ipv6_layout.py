"""The IPv6 side of the virtual network: one /64, its well-known addresses and NDP timings.

The default prefix fd42:7076:6b69::/64 is a fixed unique-local prefix (RFC 4193;
the global ID is "Bpvki" in ASCII with the L bit set) so a VM keeps its addresses
across runs and a user can write them in configuration. It is a /64 because SLAAC
needs 64-bit interface identifiers. Like the IPv4 layout, the gateway is ::1, the
host-loopback alias ::2 (connections reach the host's [::1]) and DHCPv6 hands out
::3 up to ::ffff; SLAAC addresses (EUI-64 or random) use the rest of the prefix.
The router's link-local address is fe80::1, the source of every RA.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyvpnkit.errors import UserError

DEFAULT_SUBNET = "fd42:7076:6b69::/64"
LINK_LOCAL_GATEWAY = ipaddress.IPv6Address("fe80::1").packed


@dataclass(frozen=True)
class Ipv6Layout:
    """Addresses and router-advertisement settings; NetConfig.ipv6 is None with --no-ipv6."""

    subnet: ipaddress.IPv6Network = ipaddress.IPv6Network(DEFAULT_SUBNET)
    gateway_ip: bytes = ipaddress.IPv6Address("fd42:7076:6b69::1").packed
    host_ip: bytes = ipaddress.IPv6Address("fd42:7076:6b69::2").packed
    lowest_ip: bytes = ipaddress.IPv6Address("fd42:7076:6b69::3").packed
    highest_ip: bytes = ipaddress.IPv6Address("fd42:7076:6b69::ffff").packed
    link_local_ip: bytes = LINK_LOCAL_GATEWAY
    dns_ip: bytes = b""  # where DNS is answered; empty: the gateway (slirp4netns uses ::3)
    dhcpv6: bool = True  # stateful DHCPv6 offered: RAs carry M and O
    ra_max_interval: float = 600.0  # MaxRtrAdvInterval (RFC 4861 6.2.1)
    router_lifetime: int = 1800  # 3 x MaxRtrAdvInterval
    valid_lifetime: int = 86400  # of the prefix and DHCPv6 addresses
    preferred_lifetime: int = 14400

    def __post_init__(self) -> None:
        if not self.dns_ip:
            object.__setattr__(self, "dns_ip", self.gateway_ip)

    @property
    def prefix(self) -> bytes:
        return self.subnet.network_address.packed

    def in_subnet(self, addr: bytes) -> bool:
        return ipaddress.IPv6Address(addr) in self.subnet


def ipv6_layout(text: str = DEFAULT_SUBNET) -> Ipv6Layout:
    """The layout for --ipv6-subnet, or a UserError naming the value."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        why = f"not an IPv6 network in CIDR form ({exc})"
        raise UserError(f"--ipv6-subnet {text!r}: {why}") from None
    if not isinstance(net, ipaddress.IPv6Network):
        raise UserError(f"--ipv6-subnet {text}: an IPv4 network; use --subnet for IPv4")
    if net.prefixlen != 64:
        raise UserError(
            f"--ipv6-subnet {text}: must be a /64 (SLAAC needs 64-bit interface identifiers)"
        )
    if net.is_multicast or net.is_link_local or net.is_loopback:
        raise UserError(f"--ipv6-subnet {text}: not a unicast prefix a VM can use")
    base = int(net.network_address)

    def addr(n: int) -> bytes:
        return ipaddress.IPv6Address(base + n).packed

    return Ipv6Layout(net, addr(1), addr(2), addr(3), addr(0xFFFF))
