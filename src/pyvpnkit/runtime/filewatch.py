"""A configuration file polled for changes, as vpnkit watches its files.

``load(text)`` gets the new contents ("" once the file is gone) whenever its
mtime, size or inode change; it is checked every ``interval`` seconds. The
first check only notes the file: the caller read it at start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pyvpnkit.runtime.dns_upstream import HostsFileWatcher


class PolledFile:
    def __init__(self, path: str, load: Callable[[str], None], interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self._load = load
        self._first = True
        self._watcher = HostsFileWatcher(path, self._changed, min_interval=0.0)
        self._timer: asyncio.TimerHandle | None = None

    def _changed(self, text: str) -> None:
        if self._first:
            self._first = False
        else:
            self._load(text)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher.check(loop.time())
        self._timer = loop.call_later(self.interval, self.start, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
