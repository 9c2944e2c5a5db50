"""TAP link: whole Ethernet frames through a /dev/net/tun file descriptor."""

from __future__ import annotations

import asyncio
import logging
import os

from pyvpnkit.links.base import FrameSink, Link

log = logging.getLogger("pyvpnkit.links")

# Frames read per readiness callback before yielding to other links.
READ_BATCH = 256


class TapLink(Link):
    def __init__(self, fd: int, sink: FrameSink, mtu: int, name: str = "tap") -> None:
        self.fd = fd
        self.sink = sink
        self.mtu = mtu
        self.name = name
        self.mac = None
        self.dropped = 0
        self._loop = asyncio.get_running_loop()
        self._bufsize = mtu + 14 + 4
        os.set_blocking(fd, False)
        sink.link_opened(self)
        self._loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        read, fd, size = os.read, self.fd, self._bufsize
        deliver = self.sink.frame_received
        for _ in range(READ_BATCH):
            try:
                frame = read(fd, size)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("%s: read failed: %s", self.name, exc)
                self.close()
                return
            if not frame:
                self.close()
                return
            deliver(self, frame)

    def send_frame(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
        except BlockingIOError:
            self.dropped += 1
        except OSError as exc:
            # EIO while the interface is down, EINVAL for an oversized frame.
            self.dropped += 1
            log.debug("%s: write failed: %s", self.name, exc)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
        self.sink.link_closed(self)
