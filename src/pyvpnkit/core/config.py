"""Network layout shared by every machine in the core."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

GATEWAY_MAC = bytes.fromhex("f61636bcf9c6")  # vpnkit's server MAC


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


@dataclass(frozen=True)
class NetConfig:
    """Addresses and limits of the virtual network (vpnkit-compatible defaults)."""

    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.65.0/24")
    gateway_ip: bytes = ip4("192.168.65.1")
    host_ip: bytes = ip4("192.168.65.2")  # connections to it go to the host's 127.0.0.1
    dns_ip: bytes = b""  # where DNS is answered; empty: the gateway (slirp4netns uses .3)
    serve_dns: bool = True  # False: no DNS server at all (slirp4netns --disable-dns)
    lowest_ip: bytes = ip4("192.168.65.3")
    highest_ip: bytes = ip4("192.168.65.254")
    gateway_mac: bytes = GATEWAY_MAC
    mtu: int = 1500
    domain: str = "localdomain"
    search_domains: tuple[str, ...] = ()
    host_loopback: bool = True
    host_names: tuple[str, ...] = ("host.docker.internal", "host.internal")
    gateway_names: tuple[str, ...] = ("gateway.docker.internal", "gateway.internal")
    vm_names: tuple[str, ...] = ("vm.internal",)
    lease_time: int = 7 * 24 * 3600
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.dns_ip:
            object.__setattr__(self, "dns_ip", self.gateway_ip)

    @property
    def netmask(self) -> bytes:
        return self.subnet.netmask.packed

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def in_subnet(self, addr: bytes) -> bool:
        return ipaddress.IPv4Address(addr) in self.subnet
