"""Where a proxied HTTP request goes: pure decisions from the configuration, the VM's
destination and the request head.

Kept apart from machine.py, which carries them out (connections, h11 state,
bodies): these are the policy (allow list, exclude, upstream or direct, the
target's form), testable without a flow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from pyvpnkit.core.config import NetConfig
from pyvpnkit.core.http_proxy.config import ProxyConfig, Upstream
from pyvpnkit.core.nat.routes import host_address, named_address

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization"}
_HOST = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+")  # RFC 3986 host[:port] characters

Route = tuple[str, int, bool]  # (host, port, direct)


@dataclass(frozen=True, slots=True)
class Forward:
    """Send ``request`` with ``target`` on ``route``; ``proxy`` when that is an upstream proxy."""

    request: h11.Request
    route: Route
    target: bytes
    proxy: Upstream | None


@dataclass(frozen=True, slots=True)
class ConnectDirect:
    """A CONNECT we serve ourselves: connect to ``route``, answer 200, then tunnel."""

    route: Route


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the request ourselves with ``status`` and ``text``."""

    status: int
    text: str


Plan = Forward | ConnectDirect | Refuse


def plan_request(
    cfg: ProxyConfig, net: NetConfig, mode: str, dst_ip: str, dst_port: int, req: h11.Request
) -> Plan:
    """What to do with a request from the VM on a flow of ``mode`` to ``dst_ip:dst_port``.

    A direct connection is judged by the runtime once the name is resolved;
    one to an upstream is judged here, by the target's address when it names
    one (any spelling, see routes.named_address): an upstream on the host
    would otherwise reach the host's loopback for the VM.
    """
    if mode == "http":
        return _transparent(cfg, net, dst_ip, dst_port, req)
    if req.method == b"CONNECT":
        return _connect(cfg, net, req)
    if req.target.lower().startswith(b"http://"):
        return _absolute(cfg, net, req)
    return Refuse(400, "this is an HTTP proxy: send absolute-form requests "
                  "(GET http://host/path) or CONNECT host:port")


def unreachable(net: NetConfig, host: str | None) -> str | None:
    """Why an upstream must not be asked for ``host``: an address the VMs may not reach."""
    dst = None if host is None else named_address(host)
    if dst is None or host_address(net, dst) is not None:
        return None
    return f"{host} is not reachable from the VMs"


def _refused(net: NetConfig, host: str | None) -> Refuse | None:
    reason = unreachable(net, host)
    return None if reason is None else Refuse(502, f"pyvpnkit: {reason}")


def _transparent(
    cfg: ProxyConfig, net: NetConfig, dst_ip: str, dst_port: int, req: h11.Request
) -> Plan:
    host_header = header(req, b"host")
    name = None
    if host_header is not None:
        parsed = split_authority(host_header, dst_port)
        if parsed is None or not _HOST.fullmatch(host_header):
            return Refuse(400, f"bad Host header {host_header[:200]!r}")
        name = parsed[0]
    if not cfg.allowed(name, dst_ip):
        return Refuse(403, cfg.forbidden_message(name or dst_ip))
    if cfg.http is None or cfg.excluded(name, dst_ip):
        return Forward(req, (dst_ip, dst_port, True), req.target, None)
    refused = _refused(net, name)
    if refused is not None:
        return refused
    host = host_header or authority(dst_ip, dst_port)
    target = req.target
    if target.startswith(b"/"):
        target = b"http://" + host.encode("latin-1") + target
    return Forward(req, (cfg.http.host, cfg.http.port, False), target, cfg.http)


def _absolute(cfg: ProxyConfig, net: NetConfig, req: h11.Request) -> Plan:
    url = req.target.decode("latin-1")
    try:
        parts = urlsplit(url)
        where = split_authority(parts.netloc, 80)
    except ValueError:  # e.g. an unclosed [IPv6
        where = None
    if where is None:
        return Refuse(400, f"bad URL {url[:200]}")
    host, port = where
    if not cfg.allowed(host):
        return Refuse(403, cfg.forbidden_message(host))
    if cfg.http is not None and not cfg.excluded(host):
        return _refused(net, host) or Forward(
            req, (cfg.http.host, cfg.http.port, False), req.target, cfg.http)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [(k, v) for k, v in req.headers.raw_items() if k.lower() != b"host"]
    req = h11.Request(method=req.method, target=path,
                      headers=[(b"Host", parts.netloc.encode("latin-1")), *headers])
    return Forward(req, (host, port, True), req.target, None)


def _connect(cfg: ProxyConfig, net: NetConfig, req: h11.Request) -> Plan:
    target = req.target.decode("latin-1")
    where = split_authority(target, None)
    if where is None:
        return Refuse(400, f"CONNECT needs host:port, not {target[:200]}")
    if not cfg.allowed(where[0]):
        return Refuse(403, cfg.forbidden_message(where[0]))
    if cfg.https is not None and not cfg.excluded(where[0]):
        return _refused(net, where[0]) or Forward(
            req, (cfg.https.host, cfg.https.port, False), req.target, cfg.https)
    return ConnectDirect((where[0], where[1], True))


def upstream_request(forward: Forward) -> h11.Request:
    """The request as sent on: hop-by-hop headers dropped, the proxy's credentials added.

    h11.LocalProtocolError if it cannot be sent (h11 speaks HTTP/1.1
    upstream; an HTTP/1.0 VM still gets a 1.0-style close).
    """
    proxy = forward.proxy
    drop = HOP_BY_HOP - {b"connection"}
    if proxy is not None and proxy.authorization is None:
        drop = drop - {b"proxy-authorization"}  # the VM may answer a 407 itself
    headers = [(k, v) for k, v in forward.request.headers.raw_items() if k.lower() not in drop]
    headers += proxy_auth(proxy)
    return h11.Request(method=forward.request.method, target=forward.target, headers=headers)


def proxy_auth(proxy: Upstream | None) -> list[tuple[bytes, bytes]]:
    if proxy is None or proxy.authorization is None:
        return []
    return [(b"Proxy-Authorization", proxy.authorization.encode("latin-1"))]


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_authority(text: str, default_port: int | None) -> tuple[str, int] | None:
    """`host[:port]` or `[v6][:port]` -> (host, port); None if malformed."""
    try:
        parts = urlsplit("//" + text)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.path or parts.query or parts.username is not None:
        return None
    port = port if port is not None else default_port
    return (host, port) if port is not None and 0 < port < 65536 else None


def header(req: h11.Request, name: bytes) -> str | None:
    for key, value in req.headers:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
