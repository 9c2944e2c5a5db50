"""Port-forward requests: parsing and the rules for what may be forwarded where.

Pure functions over text and the NetConfig, shared by the API, --publish and
the slirp4netns drop-in; runtime/forwarder.py does the sockets. Every refusal
is a ForwardError carrying the HTTP status the API answers with.

``forward_source`` decides which address a forwarded flow carries into the
VM: the client's own where the VM can answer it through the gateway, so
services behind published ports see who connects (logs, rate limits, allow
lists). The TCP NAT and the UDP forwarder keep such flows apart from the
NAT's own by their four-tuple and pick another port when it is taken, as
Linux's NAT does on a clash.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.ip.family import gateway_for
from pyvpnkit.core.nat.routes import host_view

PROTOCOLS = ("tcp", "udp", "unix")


class ForwardError(Exception):
    """A forward cannot be made or found; ``status`` is the HTTP status the API answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """"IP:PORT", "[V6]:PORT" or ":PORT" (empty host) -> (host, port). Only IP literals."""
    if not isinstance(text, str) or not text:
        raise ForwardError(f"{what} must be a non-empty string like 127.0.0.1:8080")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ForwardError(f"bad {what} {text!r}: expected [IPV6]:PORT")
        family = 6
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ForwardError(f"bad {what} {text!r}: expected IP:PORT")
        family = 4
    if not port_text.isdigit() or int(port_text) > 0xFFFF:
        raise ForwardError(f"bad {what} {text!r}: port must be 0-65535")
    if host:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ForwardError(f"bad {what} {text!r}: {host!r} is not an IP address") from None
        if addr.version != family:
            raise ForwardError(f"bad {what} {text!r}: IPv6 addresses need brackets")
        host = addr.compressed
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def forward_source(config: NetConfig, vm_ip: bytes, client_ip: str) -> bytes:
    """The source address a flow forwarded from ``client_ip`` carries to the VM at ``vm_ip``.

    The client's own address when it is in the VM address's family and the
    VM routes it through the gateway (not loopback, link-local, multicast or
    inside the VM network). A client on the host's loopback is the host alias,
    which the VM can also dial. Otherwise the gateway stands in.
    """
    gateway = gateway_for(config, vm_ip)
    try:
        addr = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return gateway
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        v6 = len(vm_ip) == 16
        addr = ipaddress.ip_address("::1" if v6 else "127.0.0.1")
    view = host_view(config, addr)
    return view if view is not None and len(view) == len(vm_ip) else gateway


class ForwardSources:
    """``forward_source`` remembered per client address and family of the VM's address.

    Parsing and judging the address costs about 10 us, once per forwarded
    connection; clients come back from few addresses. The config is frozen,
    so an answer never goes stale; the table is emptied when it is full.
    """

    LIMIT: ClassVar[int] = 4096

    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self._known: dict[tuple[str, int], bytes] = {}

    def __call__(self, vm_ip: bytes, client_ip: str) -> bytes:
        key = (client_ip, len(vm_ip))
        src = self._known.get(key)
        if src is None:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            src = self._known[key] = forward_source(self.config, vm_ip, client_ip)
        return src


def parse_publish(spec: str) -> tuple[str, str, str]:
    """Docker-style ``[HOST_IP:]HOST_PORT:VM_PORT[/tcp|/udp]`` -> (local, remote, protocol).

    HOST_IP defaults to 127.0.0.1, not Docker's 0.0.0.0: a published VM
    port should not be reachable from the LAN unless asked for. The remote
    is the first VM (":VM_PORT").
    """
    body, slash, proto = spec.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f"bad publish spec {spec!r}: protocol must be tcp or udp")
    if body.startswith("["):
        host, sep, rest = body[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad publish spec {spec!r}: expected [IPV6]:HOST_PORT:VM_PORT")
        host = f"[{host}]"
        ports = rest.split(":")
    else:
        parts = body.split(":")
        host, ports = ("127.0.0.1", parts) if len(parts) == 2 else (parts[0], parts[1:])
    if len(ports) != 2 or not all(p.isdigit() and 0 < int(p) <= 0xFFFF for p in ports):
        raise ValueError(
            f"bad publish spec {spec!r}: expected [HOST_IP:]HOST_PORT:VM_PORT[/tcp|/udp]"
        )
    local = f"{host or '127.0.0.1'}:{int(ports[0])}"
    try:
        split_host_port(local, "publish host address")
    except ForwardError as exc:
        raise ValueError(str(exc)) from None
    return local, f":{int(ports[1])}", proto


def protocol_of(protocol: object) -> str:
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise ForwardError(f"bad protocol {protocol!r}: use tcp, udp or unix")
    return protocol.lower()


def vm_target(config: NetConfig, remote: str) -> tuple[bytes | None, int]:
    """"IP:PORT" of a VM, or ":PORT" (None: the first VM); never the gateway's own."""
    host, port = split_host_port(remote, "remote")
    if port == 0:
        raise ForwardError(f"bad remote {remote!r}: port must be 1-65535")
    if not host:
        return None, port
    addr = ipaddress.ip_address(host)
    v6 = config.ipv6
    if addr.version == 6 and v6 is not None:
        # A VM's IPv6 address in our prefix (not the stack's own).
        if not v6.in_subnet(addr.packed) or addr.packed in (v6.gateway_ip, v6.host_ip) \
                or addr == v6.subnet.network_address:
            raise ForwardError(f"bad remote {remote!r}: not a VM address in {v6.subnet}")
        return addr.packed, port
    if (
        addr.version != 4
        or not config.in_subnet(addr.packed)
        or addr.packed in (config.gateway_ip, config.host_ip, config.dns_ip)
        or addr == config.subnet.network_address
        or addr == config.subnet.broadcast_address
    ):
        raise ForwardError(f"bad remote {remote!r}: not a VM address in {config.subnet}")
    return addr.packed, port
