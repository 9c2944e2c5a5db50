"""gvproxy's -notification messages: one JSON line per connection to a unix socket.

Types as gvproxy sends them: "ready" once the API listens,
"connection_established" the first time a MAC address sends a frame,
"connection_closed" for each MAC of a link that went away, and
"hypervisor_error" when a VM listener cannot be served. Messages queue (at
most 100, as gvproxy) and go out in order; a listener that is not there
costs a log line, never the service.
"""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("pyvpnkit.frontends.gvproxy")

READY = "ready"
ESTABLISHED = "connection_established"
HYPERVISOR_ERROR = "hypervisor_error"
CLOSED = "connection_closed"
QUEUE = 100


class Notifier:
    def __init__(self, path: str) -> None:
        self.path = path
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._macs: dict[bytes, int] = {}  # source MAC -> link it was last seen on

    def send(self, kind: str, mac: str = "") -> None:
        message = {"notification_type": kind, **({"mac_address": mac} if mac else {})}
        try:
            self._queue.put_nowait(json.dumps(message).encode() + b"\n")
        except asyncio.QueueFull:
            log.warning("notification %s dropped: %d waiting", kind, QUEUE)
            return
        if self._task is None:
            self._task = asyncio.ensure_future(self._deliver())

    async def _deliver(self) -> None:
        while True:
            data = await self._queue.get()
            try:
                _reader, writer = await asyncio.open_unix_connection(self.path)
                writer.write(data)
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            except OSError as exc:
                log.error("failed to send notification to %s: %s", self.path,
                          exc.strerror or exc)

    async def flush(self, timeout: float = 2.0) -> None:
        """Wait (a little) until every queued message went out, e.g. before exiting."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._queue.empty() and loop.time() < end:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the last one being written

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- engine taps -------------------------------------------------------------

    def frame_tap(self, link: int, frame: bytes | memoryview, incoming: bool) -> None:
        if not incoming or len(frame) < 12:
            return
        mac = bytes(frame[6:12])
        if self._macs.get(mac) is None:
            self.send(ESTABLISHED, mac.hex(":"))
        self._macs[mac] = link

    def link_closed(self, link: int) -> None:
        for mac in [m for m, n in self._macs.items() if n == link]:
            del self._macs[mac]
            self.send(CLOSED, mac.hex(":"))
