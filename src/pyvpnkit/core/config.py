"""Network layout shared by every machine in the core."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pyvpnkit.core.ip.ipv6_layout import Ipv6Layout
from pyvpnkit.errors import UserError

GATEWAY_MAC = bytes.fromhex("f61636bcf9c6")  # vpnkit's server MAC
MIN_MTU = 576  # the link MTUs every front end accepts
MAX_MTU = 65520


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
    # Without it, the alias is refused with this ICMP error (icmp_errors' kinds); TCP
    # gets it only for "net_unreachable" (slirp4netns: ENETUNREACH), else an RST.
    no_host_loopback: str = "admin_prohibited"
    host_names: tuple[str, ...] = ("host.docker.internal", "host.internal")
    gateway_names: tuple[str, ...] = ("gateway.docker.internal", "gateway.internal")
    vm_names: tuple[str, ...] = ("vm.internal",)
    lease_time: int = 7 * 24 * 3600
    uuid_macs: dict[str, bytes] = field(default_factory=dict)  # vmnet UUID -> MAC (gvproxy)
    blocked: tuple[ipaddress.IPv4Network, ...] = ()  # never reached (gvproxy: 169.254.0.0/16)
    # gvproxy's NAT table beyond the host alias: VM flows to a virtual IP go to a host
    # address; and its gateway virtual IPs, which answer ping as the gateway does
    nat: tuple[tuple[bytes, str], ...] = ()
    virtual_ips: tuple[bytes, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    ipv6: Ipv6Layout | None = field(default_factory=Ipv6Layout)  # None: --no-ipv6

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


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """--subnet: an IPv4 network with room for the gateway, the host alias and one VM."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise UserError(f"--subnet {text!r}: not an IPv4 network in CIDR form ({exc})") from None
    if net.version != 4:
        raise UserError(f"--subnet {text}: IPv6 subnets are not supported yet")
    assert isinstance(net, ipaddress.IPv4Network)
    if net.num_addresses < 8:
        raise UserError(
            f"--subnet {text}: too small; the gateway, the host alias and a VM "
            "need a /29 or larger"
        )
    return net


def network_layout(
    subnet: str,
    gateway_ip: bytes | None = None,
    host_ip: bytes | None = None,
    lowest_ip: bytes | None = None,
    highest_ip: bytes | None = None,
    **options: Any,
) -> NetConfig:
    """The NetConfig for a subnet and the addresses the user overrode, or a UserError.

    Defaults: gateway .1, host alias .2, VM pool .3 to the last host. Every
    address must be a host of the subnet; the gateway, the alias and the
    pool (lowest..highest) must not overlap, since the first VM is given
    the lowest address outright.
    """
    net = parse_subnet(subnet)
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - 1

    def pick(name: str, given: bytes | None, default: int) -> int:
        value = int.from_bytes(given, "big") if given is not None else default
        if not first <= value <= last:
            raise UserError(
                f"--{name} {ipaddress.IPv4Address(value)} is not a host address of "
                f"--subnet {net} ({ipaddress.IPv4Address(first)}-{ipaddress.IPv4Address(last)})"
            )
        return value

    gateway = pick("gateway-ip", gateway_ip, first)
    host = pick("host-ip", host_ip, first + 1)
    lowest = pick("lowest-ip", lowest_ip, first + 2)
    highest = pick("highest-ip", highest_ip, last)
    dotted = ipaddress.IPv4Address
    if lowest > highest:
        raise UserError(
            f"--lowest-ip {dotted(lowest)} is above --highest-ip {dotted(highest)}: "
            "the pool is empty"
        )
    if gateway == host:
        raise UserError(f"--gateway-ip and --host-ip are both {dotted(gateway)}")
    for name, addr in (("gateway-ip", gateway), ("host-ip", host)):
        if lowest <= addr <= highest:
            raise UserError(
                f"--{name} {dotted(addr)} is inside the VM pool {dotted(lowest)}-{dotted(highest)}"
                "; move it or set --lowest-ip/--highest-ip around it"
            )
    return NetConfig(
        subnet=net,
        gateway_ip=dotted(gateway).packed,
        host_ip=dotted(host).packed,
        lowest_ip=dotted(lowest).packed,
        highest_ip=dotted(highest).packed,
        **options,
    )
