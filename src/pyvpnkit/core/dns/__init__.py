"""DNS on the gateway: built-in names, hosts file and forwarding, sans-I/O."""

from pyvpnkit.core.dns.forwarder import Forwarder, Resolved
from pyvpnkit.core.dns.names import LocalNames, parse_hosts
from pyvpnkit.core.dns.server import DnsAnswer, DnsServer
from pyvpnkit.core.dns.tcpframing import DnsTcpDecoder, encode_tcp_message
from pyvpnkit.core.effects import HostResolve, UpstreamQuery

__all__ = [
    "DnsAnswer",
    "DnsServer",
    "DnsTcpDecoder",
    "Forwarder",
    "HostResolve",
    "LocalNames",
    "Resolved",
    "UpstreamQuery",
    "encode_tcp_message",
    "parse_hosts",
]
