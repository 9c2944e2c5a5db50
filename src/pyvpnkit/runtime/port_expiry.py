"""vpnkit's --port-max-idle-time: a VM link (switch port) quiet for that long is closed.

vpnkit checks every 30 s and removes endpoints idle longer than the limit,
freeing their switch port; here the link closes (its VMs leave the switch,
their flows end) and, for a vmnet link, its VIF's address lease ends (the
address is remembered for the same UUID, as any lease). TAP links (exec,
--netns, --tap) never expire. Frames are noted per link with one set
insertion, not a clock read per frame.
"""

from __future__ import annotations

import asyncio
import logging

from pyvpnkit.core.switch.ippool import mac_key
from pyvpnkit.runtime.engine import Engine

log = logging.getLogger("pyvpnkit")

SWEEP = 30.0  # vpnkit's interval


class PortExpiry:
    def __init__(self, engine: Engine, max_idle: float) -> None:
        self.engine = engine
        self.max_idle = max_idle
        self.sweep = min(SWEEP, max_idle / 2)
        self._seen: set[int] = set()
        self._last: dict[int, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        engine.frame_taps.append(self._tap)
        self._timer = engine.loop.call_later(self.sweep, self._sweep)

    def _tap(self, link: int, frame: bytes | memoryview, incoming: bool) -> None:
        if incoming:
            self._seen.add(link)

    def _sweep(self) -> None:
        now = self.engine.loop.time()
        seen, self._seen = self._seen, set()
        for n, link in list(self.engine.links.items()):
            last = self._last.setdefault(n, now)
            if n in seen:
                self._last[n] = now
            elif now - last > self.max_idle and link.expires:
                log.info("link %s idle for %.0f s: closed (--port-max-idle-time)",
                         link.name, now - last)
                if link.mac is not None:
                    self.engine.stack.pool.release(mac_key(link.mac))
                link.close()
        self._last = {n: t for n, t in self._last.items() if n in self.engine.links}
        self._timer = self.engine.loop.call_later(self.sweep, self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tap in self.engine.frame_taps:
            self.engine.frame_taps.remove(self._tap)
