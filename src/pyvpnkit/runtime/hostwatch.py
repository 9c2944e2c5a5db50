"""Following the host's network while the stack runs (README: "When the host's
network changes").

- DNS: the resolv.conf the stack read at start is watched (filewatch.py);
  core/dns/upstreams.py decides what a new text means, and the DNS server gets
  the new list. `--dns-server` given explicitly is never overridden: then there
  is nothing to watch.
- Routes: a host socket that fails because the host has no route (connect,
  sendto) already fails the VM's flow at once (an RST or an ICMP unreachable);
  `RouteErrors` counts those failures by errno for /stats.
- Addresses: a TCP connection whose host socket is bound to an address the host
  no longer has would hang until its retransmissions give up; every tick the
  distinct source addresses of host connections are checked (a bind() to each)
  and the connections of a vanished one are reset towards the VM.
- Stops and clock jumps: all timers run on the monotonic clock, and the engine
  fires everything that fell due in one pass. The tick notices when it wakes
  up late (SIGSTOP, a suspended VM, a blocked loop) and counts it, so /stats
  shows that a catch-up happened.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from pyvpnkit.core.dns.upstreams import HostUpstreams
from pyvpnkit.runtime.filewatch import FileWatcher, read_text

log = logging.getLogger("pyvpnkit")

TICK = 1.0
LATE = 2.0  # a tick this much late means the process did not run: a catch-up
ROUTE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.EADDRNOTAVAIL}
)


class RouteErrors:
    """Host socket failures that say "no route from here", by errno name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def note(self, err: int | None) -> None:
        if err in ROUTE_ERRNOS:
            assert err is not None
            self.counts[errno.errorcode[err]] += 1


class SourceBound(Protocol):
    def reset_vanished_sources(self, is_local: Callable[[tuple[Any, ...]], bool]) -> int: ...


class Upstreams(Protocol):
    def set_upstreams(self, upstreams: list[tuple[str, int]]) -> None: ...


def is_local_address(sockaddr: tuple[Any, ...]) -> bool:
    """Whether the host still has this source address (bind() says EADDRNOTAVAIL if not)."""
    family = socket.AF_INET6 if len(sockaddr) == 4 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((sockaddr[0], 0, *sockaddr[2:]))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


class HostWatch:
    """Keeps the stack in step with the host: DNS upstreams, source addresses, stops."""

    def __init__(
        self,
        dns: Upstreams,
        upstreams: HostUpstreams,
        resolv_path: str | None,
        tcp: SourceBound,
        route_errors: RouteErrors,
        *,
        is_local: Callable[[tuple[Any, ...]], bool] = is_local_address,
    ) -> None:
        self._dns = dns
        self.upstreams = upstreams
        self.resolv_path = resolv_path  # None: --dns-server given, nothing to follow
        self._tcp = tcp
        self.route_errors = route_errors
        self._is_local = is_local
        self._watcher: FileWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.catch_ups = 0
        self.longest_stop = 0.0
        self.vanished_resets = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.resolv_path is not None:
            self._watcher = FileWatcher(self.resolv_path, self._resolv_changed)
            self._watcher.start(loop)
        self._due = loop.time() + TICK
        self._tick = loop.call_at(self._due, self._on_tick)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    # -- resolv.conf ----------------------------------------------------------

    def _resolv_changed(self) -> None:
        upstreams, loop, path = self.upstreams, self._loop, self.resolv_path
        assert loop is not None and path is not None
        outcome = upstreams.update(read_text(path), loop.time())
        if outcome == "changed":
            self._dns.set_upstreams(upstreams.servers)
            log.info("DNS upstreams from %s: %s%s", path,
                     ", ".join(f"{h}#{p}" if p != 53 else h for h, p in upstreams.servers),
                     f" (search {' '.join(upstreams.search)})" if upstreams.search else "")
        elif outcome == "kept":
            kept = ", ".join(h for h, _ in upstreams.servers) or "none"
            log.warning("%s %s: keeping the DNS upstreams %s", path,
                        upstreams.problem, kept)

    # -- the tick -------------------------------------------------------------

    def _on_tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        late = now - self._due
        if late > LATE:
            self.catch_ups += 1
            self.longest_stop = max(self.longest_stop, late)
            log.info("the process did not run for %.0f s (stopped, or the machine slept): "
                     "timers that fell due fire once now", late)
        reset = self._tcp.reset_vanished_sources(self._is_local)
        if reset:
            self.vanished_resets += reset
            log.info("reset %d connection(s) whose host address went away", reset)
        self._due = now + TICK
        self._tick = loop.call_at(self._due, self._on_tick)

    # -- /stats ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        up = self.upstreams
        if self._loop is not None:
            loaded = None
            if up.loaded_at is not None:
                wall = time.time() - (self._loop.time() - up.loaded_at)
                loaded = datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")
            out["dns"] = {
                "source": self.resolv_path or "--dns-server",
                "watch": self._watcher.mode if self._watcher is not None else "none",
                "upstreams": [f"{h}#{p}" for h, p in up.servers],
                "search": list(up.search),
                "loaded_at": loaded,
                "reloads": up.reloads,
                "kept_last_good": up.kept,
            }
        out["routes"] = {
            "errors": dict(sorted(self.route_errors.counts.items())),
            "vanished_source_resets": self.vanished_resets,
        }
        out["clock"] = {"catch_ups": self.catch_ups,
                        "longest_stop_s": round(self.longest_stop, 1)}
        return out


__all__ = ["HostWatch", "RouteErrors", "is_local_address"]
