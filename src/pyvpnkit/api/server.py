"""The control API: gvisor-tap-vsock's HTTP routes, so podman/lima-style clients work unchanged.

Routes: POST /services/forwarder/expose {"local","remote","protocol"} (and
pyvpnkit's optional "forward_source": false: the VM sees the gateway, not the client),
POST /services/forwarder/unexpose {"local","protocol"}, GET
/services/forwarder/all, GET /stats, GET /leases (also /services/dhcp/leases),
GET /cam (VM MAC -> link), POST /services/dns/add {"Name","Records","DefaultIP"},
GET /services/dns/all, vpnkit's GET and POST
/http_proxy.json (the HTTP proxy's configuration), the network conditions
(GET/POST/PUT/DELETE /conditions, DELETE /conditions/ID) and GET /metrics
(Prometheus). Bad requests get a 4xx with
a one-line text reason; no request can stop the service. There is no
authentication: the unix socket is created mode 0600 (owner only) and a TCP
listener should stay on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pyvpnkit.core.dns.zones import ZoneError, zone_from_dict
from pyvpnkit.core.switch.ippool import key_mac
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.runtime.forwarder import ForwardError, remove_stale_socket

log = logging.getLogger("pyvpnkit.api")

MAX_BODY = 64 * 1024


class ForwarderLike(Protocol):
    def expose(
        self, local: str, remote: str, protocol: str = "tcp", forward_source: bool | None = None
    ) -> dict[str, str | bool]: ...
    def unexpose(self, local: str, protocol: str = "tcp") -> None: ...
    def list(self) -> list[dict[str, str | bool]]: ...


class ProxyLike(Protocol):
    """The HTTP proxy's configuration, as GET/POST /http_proxy.json see it."""

    def config_json(self) -> dict[str, Any]: ...
    def set_config_json(self, obj: object) -> None: ...


class FrameCounter:
    """An engine frame tap counting what we send to VMs (the stack counts what comes in)."""

    def __init__(self) -> None:
        self.frames_out = 0
        self.bytes_out = 0

    def tap(self, link: int, frame: bytes | memoryview, incoming: bool) -> None:
        if not incoming:
            self.frames_out += 1
            self.bytes_out += len(frame)


FORWARDER = web.AppKey("forwarder", ForwarderLike)
STACK = web.AppKey("stack", Stack)
COUNTER = web.AppKey("counter", FrameCounter)
StatsFn = Callable[[], dict[str, Any]]
EXTRA_STATS: web.AppKey[StatsFn] = web.AppKey("extra_stats")
HTTP_PROXY = web.AppKey("http_proxy", ProxyLike)
METRICS = web.AppKey("metrics", CollectorRegistry)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message.rstrip("\n") + "\n")


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # 413 past MAX_BODY
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"malformed JSON body: {exc}\n") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="JSON body must be an object\n")
    return body


def _field(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name)
    if value in (None, "") and default is not None:
        return default
    if not isinstance(value, str) or not value:
        raise web.HTTPBadRequest(text=f'"{name}" is required and must be a string\n')
    return value


async def expose(request: web.Request) -> web.Response:
    body = await _json_object(request)
    try:
        keep = body.get("forward_source")
        if keep is not None and not isinstance(keep, bool):
            raise web.HTTPBadRequest(text='"forward_source" must be true or false\n')
        info = request.app[FORWARDER].expose(
            _field(body, "local"), _field(body, "remote"), _field(body, "protocol", "tcp"), keep
        )
    except ForwardError as exc:
        return _text(exc.status, str(exc))
    return web.json_response(info)


async def unexpose(request: web.Request) -> web.Response:
    body = await _json_object(request)
    try:
        request.app[FORWARDER].unexpose(_field(body, "local"), _field(body, "protocol", "tcp"))
    except ForwardError as exc:
        return _text(exc.status, str(exc))
    return web.Response(status=200)


async def forwards(request: web.Request) -> web.Response:
    return web.json_response(request.app[FORWARDER].list())


def leases_of(stack: Stack) -> dict[str, str]:
    """{"192.168.65.3": "mac"} like gvproxy: live VMs plus DHCP/VIF leases keyed by MAC."""
    out: dict[str, str] = {}
    for key, ip in stack.pool.leases().items():
        mac = key_mac(key)
        if mac is not None:
            out[socket.inet_ntoa(ip)] = mac.hex(":")
    for ip, vm in stack.vms.items():
        out[socket.inet_ntoa(ip)] = vm.mac.hex(":")
    return dict(sorted(out.items(), key=lambda kv: socket.inet_aton(kv[0])))


async def leases(request: web.Request) -> web.Response:
    return web.json_response(leases_of(request.app[STACK]))


async def cam(request: web.Request) -> web.Response:
    """gvproxy's switch table: each VM MAC and the link it was last seen on."""
    return web.json_response({m.hex(":"): n for m, n in request.app[STACK].macs.items()})


async def dns_add(request: web.Request) -> web.Response:
    """Add a zone, or put records in front of an existing zone's (gvproxy's /services/dns/add)."""
    try:
        zone = zone_from_dict(await _json_object(request))
    except ZoneError as exc:
        return _text(400, str(exc))
    request.app[STACK].dns.names.zones.add(zone)
    return web.Response(status=200)


async def dns_all(request: web.Request) -> web.Response:
    return web.json_response(request.app[STACK].dns.names.zones.to_json())


def stats_of(stack: Stack, counter: FrameCounter | None = None) -> dict[str, Any]:
    """Traffic counters, drops by reason and live flows, from the machines' own counters."""
    s = stack.stats
    drops: dict[str, int] = {k[5:]: v for k, v in s.items() if k.startswith("drop_")}
    machines: dict[str, Any] = {
        "udp": stack.udp, "icmp": stack.icmp, "udp_forward": stack.udp_forward, "frag": stack.frag
    }
    v6 = stack.v6
    if v6 is not None:
        machines.update(ipv6=v6, ndp=v6.ndp, dhcpv6=v6.dhcp, frag6=v6.frag)
    for name, machine in machines.items():
        for k, v in getattr(machine, "stats", {}).items():
            if k.startswith(("drop_", "frag_dropped", "frag_no_memory")):
                drops[f"{name}_{k.removeprefix('drop_')}"] = v
    tcp = stack.tcp
    forwarded = tcp.forwarded_count()
    return {
        "frames_in": s.get("frames_in", 0),
        "bytes_in": s.get("bytes_in", 0),
        "frames_out": s.get("frames_out", 0),
        "bytes_out": counter.bytes_out if counter is not None else s.get("bytes_out"),
        "drops": dict(sorted(drops.items())),
        "flows": {
            "tcp": len(tcp),
            "udp": len(stack.udp),
            "icmp": len(stack.icmp),
            "udp_forward": len(stack.udp_forward),
            # of those, IPv6 flows
            "tcp_ipv6": sum(len(key[0]) == 16 for key in tcp.flows),
            "udp_ipv6": stack.udp.ipv6_flows,
            "icmp_ipv6": stack.icmp.ipv6_flows,
        },
        # Sizes of the tables that must follow the flow count, for soak runs to watch.
        "tables": {
            "tcp_timers": tcp.timer_entries,
            "tcp_pending_connects": tcp.pending_connects,
            "dns_pending": stack.dns.forwarder.pending_count,
        },
        "connections": {
            "tcp_forwarded_in": forwarded,
            "tcp_outbound": len(tcp) - forwarded,
            **{f"tcp_{k}": v for k, v in tcp.stats.items()},
        },
        "machines": {
            name: dict(getattr(m, "stats", {})) for name, m in machines.items()
        },
        "vms": {socket.inet_ntoa(ip): vm.mac.hex(":") for ip, vm in stack.vms.items()},
        "conditions": stack.conditions.to_json(),
        "vms6": {
            str(ipaddress.IPv6Address(ip)): mac.hex(":") for ip, mac in v6.neighbors.items()
        } if v6 is not None else {},
    }


async def stats(request: web.Request) -> web.Response:
    app = request.app
    out = stats_of(app[STACK], app.get(COUNTER))
    extra = app.get(EXTRA_STATS)
    if extra is not None:
        out.update(extra())
    return web.json_response(out)


async def get_http_proxy(request: web.Request) -> web.Response:
    return web.json_response(request.app[HTTP_PROXY].config_json())


async def post_http_proxy(request: web.Request) -> web.Response:
    """Replace the configuration (until the --http file changes); 400 names what is wrong."""
    from pyvpnkit.core.http_proxy.config import ConfigError

    raw = await request.read()
    proxy = request.app[HTTP_PROXY]
    try:
        proxy.set_config_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "invalid http_proxy.json" if isinstance(exc, ConfigError) else "malformed JSON body"
        return _text(400, f"{kind}: {exc}")
    return web.json_response(proxy.config_json())


async def conditions_list(request: web.Request) -> web.Response:
    return web.json_response(request.app[STACK].conditions.to_json())


async def conditions_add(request: web.Request) -> web.Response:
    """One rule, appended; the reply is the rule with its ``id``. 400 names the bad field."""
    from pyvpnkit.core.conditions import ConditionError

    try:
        rule = request.app[STACK].conditions.add(await _json_object(request))
    except ConditionError as exc:
        return _text(400, f"bad rule: {exc}")
    return web.json_response(rule.to_json())


async def conditions_replace(request: web.Request) -> web.Response:
    """PUT: the whole list at once (a JSON list of rules); all of it or nothing."""
    from pyvpnkit.core.conditions import ConditionError

    try:
        body = json.loads(await request.read())
        request.app[STACK].conditions.replace(body)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "bad rule" if isinstance(exc, ConditionError) else "malformed JSON body"
        return _text(400, f"{kind}: {exc}")
    return web.json_response(request.app[STACK].conditions.to_json())


async def conditions_clear(request: web.Request) -> web.Response:
    request.app[STACK].conditions.replace([])
    return web.json_response([])


async def conditions_remove(request: web.Request) -> web.Response:
    text = request.match_info["id"]
    if not text.isdigit() or not request.app[STACK].conditions.remove(int(text)):
        return _text(404, f"no rule {text}")
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    """The registry api/metrics.py builds, in the Prometheus text format."""
    return web.Response(body=generate_latest(request.app[METRICS]),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unexpected bugs become a 500 with the reason; the service itself keeps going."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("API %s %s failed", request.method, request.path)
        return _text(500, f"internal error: {type(exc).__name__}: {exc}")


def make_app(
    forwarder: ForwarderLike,
    stack: Stack,
    *,
    counter: FrameCounter | None = None,
    extra_stats: Callable[[], dict[str, Any]] | None = None,
    http_proxy: ProxyLike | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[FORWARDER] = forwarder
    app[STACK] = stack
    if counter is not None:
        app[COUNTER] = counter
    if extra_stats is not None:
        app[EXTRA_STATS] = extra_stats
    app.router.add_post("/services/forwarder/expose", expose)
    app.router.add_post("/services/forwarder/unexpose", unexpose)
    app.router.add_get("/services/forwarder/all", forwards)
    app.router.add_get("/stats", stats)
    app.router.add_get("/leases", leases)
    app.router.add_get("/services/dhcp/leases", leases)
    app.router.add_get("/cam", cam)
    app.router.add_post("/services/dns/add", dns_add)
    app.router.add_get("/services/dns/all", dns_all)
    app.router.add_get("/conditions", conditions_list)
    app.router.add_post("/conditions", conditions_add)
    app.router.add_put("/conditions", conditions_replace)
    app.router.add_delete("/conditions", conditions_clear)
    app.router.add_delete("/conditions/{id}", conditions_remove)
    if metrics_registry is not None:
        app[METRICS] = metrics_registry
        app.router.add_get("/metrics", metrics)
    if http_proxy is not None:
        app[HTTP_PROXY] = http_proxy
        app.router.add_get("/http_proxy.json", get_http_proxy)
        app.router.add_post("/http_proxy.json", post_http_proxy)
    return app


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """--metrics-listen: only GET /metrics, for a Prometheus scraper."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[METRICS] = registry
    app.router.add_get("/metrics", metrics)
    return app


def _unix_path(url: str) -> str:
    path = url.removeprefix("unix://")
    if not path or "\0" in path:
        raise ValueError(f"bad API address {url!r}: expected unix:///PATH")
    return os.path.abspath(path)


@dataclass
class ApiServer:
    """A started API: the aiohttp runner and the unix socket file to remove at the end."""

    runner: web.AppRunner
    url: str
    path: str | None = None

    async def close(self) -> None:
        await self.runner.cleanup()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None


async def start_api(url: str, app: web.Application) -> ApiServer:
    """Serve ``app`` on unix:///PATH (mode 0600) or tcp://HOST:PORT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    server = ApiServer(runner, url)
    try:
        site: web.BaseSite
        if url.startswith("unix://"):
            path = _unix_path(url)
            try:
                remove_stale_socket(path)
            except ForwardError as exc:
                raise OSError(f"API socket {path}: {exc}") from None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                server.path = path
                # Before listen(): no one can connect until only the owner may.
                os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            except OSError:
                sock.close()
                raise
            site = web.SockSite(runner, sock)
        elif url.startswith("tcp://"):
            parts = urlsplit(url)
            if not parts.hostname or parts.port is None:
                raise ValueError(f"bad API address {url!r}: expected tcp://HOST:PORT")
            if parts.hostname not in ("127.0.0.1", "::1", "localhost"):
                log.warning("the API has no authentication and listens on %s", parts.hostname)
            site = web.TCPSite(runner, parts.hostname, parts.port)
        else:
            raise ValueError(f"bad API address {url!r}: use unix:///PATH or tcp://HOST:PORT")
        await site.start()
    except BaseException:
        await server.close()
        raise
    log.info("API listening on %s", url)
    return server


__all__ = [
    "ApiServer",
    "FrameCounter",
    "ForwarderLike",
    "leases_of",
    "make_app",
    "start_api",
    "stats_of",
]
