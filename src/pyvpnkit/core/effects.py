"""Effects the core asks the runtime to perform on the host.

Frames for VMs are not effects: the stack returns them separately so the hot
path does not allocate an object per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

Client = tuple[str, int]  # a host peer (address text, port)


# -- TCP NAT (runtime/host_tcp.py)


@dataclass(frozen=True, slots=True)
class TcpOpen:
    """Connect a host socket for a new flow from a VM: TCP to (host, port), or a unix socket."""

    flow_id: int
    host: str
    port: int
    unix_path: str | None = None


@dataclass(frozen=True, slots=True)
class TcpWrite:
    flow_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TcpShutdown:
    """The VM sent FIN: half-close the host socket for writing."""

    flow_id: int


@dataclass(frozen=True, slots=True)
class TcpCloseHost:
    """Forget the host socket (reset=True aborts it with RST via SO_LINGER 0)."""

    flow_id: int
    reset: bool = False


@dataclass(frozen=True, slots=True)
class TcpPauseReading:
    flow_id: int


@dataclass(frozen=True, slots=True)
class TcpResumeReading:
    flow_id: int


# -- UDP NAT (runtime/host_udp.py)


@dataclass(frozen=True, slots=True)
class UdpOpen:
    """Open a host UDP socket (bound to 0.0.0.0:0) for the VM endpoint ``vm``."""

    flow_id: int
    vm: tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class UdpSend:
    """sendto() on the flow's socket; ``ttl`` is the VM's TTL minus our hop."""

    flow_id: int
    dst_ip: str
    dst_port: int
    payload: bytes
    ttl: int


@dataclass(frozen=True, slots=True)
class UdpClose:
    flow_id: int


# -- ICMP NAT (runtime/host_icmp.py)


@dataclass(frozen=True, slots=True)
class IcmpEchoSend:
    """Send an echo request on the flow's host ICMP socket (created on first use)."""

    flow_id: int
    dst_ip: str
    ident: int  # the VM's identifier (a raw-socket runtime may substitute its own)
    seq: int
    payload: bytes
    ttl: int


@dataclass(frozen=True, slots=True)
class IcmpClose:
    flow_id: int


# -- DNS (runtime/dns_upstream.py, runtime/host_resolver.py)


@dataclass(frozen=True, slots=True)
class UpstreamQuery:
    """Send `data` to `server` over `transport` ("udp" or "tcp"; for TCP the
    runtime adds the 2-byte length) and report the reply or failure for `token`."""

    token: int
    server: tuple[str, int]
    transport: str
    data: bytes


@dataclass(frozen=True, slots=True)
class HostResolve:
    """Ask the host's resolver, then report with `DnsServer.handle_host_answer`.

    A/AAAA: getaddrinfo(`name`, family AF_INET/AF_INET6); report the address
    texts. PTR: `name` is the address text; getnameinfo(NI_NAMEREQD); report
    [hostname]. Failures are reported as NXDOMAIN, NODATA or SERVFAIL.
    """

    token: int
    name: str
    rdtype: int


# -- UDP port forwards (runtime/forwarder.py)


@dataclass(frozen=True, slots=True)
class UdpForwardReply:
    """Send ``payload`` to ``client`` from the host socket of listener ``listener_id``."""

    listener_id: int
    client: Client
    payload: bytes


# -- the HTTP proxy (runtime/http_proxy.py): a proxied flow's host side is the proxy.
# Its requests are the TCP ones under their own types, so the engine, which routes
# by exact type, hands them to the proxy and never to the host sockets.


@dataclass(frozen=True, slots=True)
class ProxyOpen:
    """A new VM flow the HTTP proxy serves instead of a host socket (mode http/https/explicit)."""

    flow_id: int
    dst: str
    port: int
    mode: str


@dataclass(frozen=True, slots=True)
class ProxyWrite(TcpWrite):
    """TcpWrite for a proxied flow."""


@dataclass(frozen=True, slots=True)
class ProxyShutdown(TcpShutdown):
    """TcpShutdown for a proxied flow."""


@dataclass(frozen=True, slots=True)
class ProxyClose(TcpCloseHost):
    """TcpCloseHost for a proxied flow."""


@dataclass(frozen=True, slots=True)
class ProxyPauseReading(TcpPauseReading):
    """TcpPauseReading for a proxied flow."""


@dataclass(frozen=True, slots=True)
class ProxyResumeReading(TcpResumeReading):
    """TcpResumeReading for a proxied flow."""


@dataclass(frozen=True, slots=True)
class HostSide:
    """The effect types that reach one TCP flow's host side, chosen when the flow opens."""

    write: type[TcpWrite]
    shutdown: type[TcpShutdown]
    close: type[TcpCloseHost]
    pause: type[TcpPauseReading]
    resume: type[TcpResumeReading]


HOST_SOCKET = HostSide(TcpWrite, TcpShutdown, TcpCloseHost, TcpPauseReading, TcpResumeReading)
HTTP_PROXY = HostSide(ProxyWrite, ProxyShutdown, ProxyClose, ProxyPauseReading,
                      ProxyResumeReading)


Effect = (
    TcpOpen | TcpWrite | TcpShutdown | TcpCloseHost | TcpPauseReading | TcpResumeReading
    | ProxyOpen | ProxyWrite | ProxyShutdown | ProxyClose | ProxyPauseReading | ProxyResumeReading
    | UdpOpen | UdpSend | UdpClose
    | IcmpEchoSend | IcmpClose
    | UpstreamQuery | HostResolve
    | UdpForwardReply
)
"""Everything the core asks of the host: each runtime executor performs some of these."""
