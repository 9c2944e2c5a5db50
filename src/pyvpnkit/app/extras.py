"""The --publish forwards, the --api server (with /http_proxy.json) and --port-max-idle-time
of a running Service.

Started once the engine runs; a forward or API that cannot start stops the
service, as `docker run -p` refuses to start on a taken port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvpnkit.app.options import Options
from pyvpnkit.core.switch.stack import Stack
from pyvpnkit.runtime.engine import Engine
from pyvpnkit.runtime.forwarder import Forwarder, ForwardError
from pyvpnkit.runtime.host_tcp import HostTcp
from pyvpnkit.runtime.http_proxy import HttpProxy
from pyvpnkit.runtime.limits import DescriptorBudget
from pyvpnkit.runtime.port_expiry import PortExpiry

if TYPE_CHECKING:  # aiohttp costs most of a second to import: only when an API is asked for
    from pyvpnkit.api.server import ApiServer

log = logging.getLogger("pyvpnkit")

FrameTap = Callable[[int, bytes, bool], None]


@dataclass
class ServiceExtras:
    """What start_service_extras started; ``aclose()`` stops it all."""

    forwarder: Forwarder
    engine: Engine
    api: ApiServer | None = None
    metrics: ApiServer | None = None  # --metrics-listen
    taps: list[FrameTap] = field(default_factory=list)
    error: str | None = None
    expiry: PortExpiry | None = None  # --port-max-idle-time

    async def aclose(self) -> None:
        for server in (self.api, self.metrics):
            if server is not None:
                await server.close()
        self.api = self.metrics = None
        self.forwarder.close()
        if self.expiry is not None:
            self.expiry.close()
        for tap in self.taps:
            if tap in self.engine.frame_taps:
                self.engine.frame_taps.remove(tap)
        self.taps.clear()


async def start_service_extras(
    engine: Engine,
    stack: Stack,
    host_tcp: HostTcp,
    options: Options,
    stop: Callable[[], None],
    extra_stats: Callable[[], dict[str, Any]] | None = None,
    http_proxy: HttpProxy | None = None,
    budget: DescriptorBudget | None = None,
) -> ServiceExtras:
    """Start the forwarder, apply --publish and serve --api; on failure log, ``stop()``."""
    forwarder = Forwarder(engine, stack, host_tcp, forward_source=options.forward_source,
                          backlog=options.listen_backlog,
                          allowed_binds=options.allowed_bind_addresses)
    extras = ServiceExtras(forwarder, engine)
    if options.port_max_idle_time > 0:
        extras.expiry = PortExpiry(engine, options.port_max_idle_time)
    engine.add_executor(extras.forwarder)
    try:
        for local, remote, protocol in options.publish:
            extras.forwarder.expose(local, remote, protocol)
        registry = None
        if options.api or options.metrics_listen:
            from pyvpnkit.api.metrics import MetricSources, make_registry

            registry = make_registry(
                MetricSources(stack, budget, host_tcp, extras.forwarder, http_proxy))
        listen = options.metrics_listen
        if listen and registry is not None:
            from pyvpnkit.api.server import metrics_app, start_api

            try:
                extras.metrics = await start_api(listen, metrics_app(registry))
            except OSError as exc:
                where = listen.removeprefix("tcp://")
                raise ForwardError(f"cannot serve --metrics-listen {where}: "
                                   f"{exc.strerror or exc}") from None
        url = options.api
        if url:
            from pyvpnkit.api.server import FrameCounter, make_app, start_api

            counter = FrameCounter()
            engine.frame_taps.append(counter.tap)
            extras.taps.append(counter.tap)
            app = make_app(extras.forwarder, stack, counter=counter, extra_stats=extra_stats,
                           http_proxy=http_proxy, metrics_registry=registry)
            try:
                extras.api = await start_api(url, app)
            except OSError as exc:
                raise ForwardError(f"cannot serve --api {url}: {exc.strerror or exc}") from None
    except (ForwardError, OSError, ValueError) as exc:
        extras.error = str(exc)
        log.error("%s", exc)
        await extras.aclose()
        stop()
    return extras
