"""Tell the owner when a file's contents may have changed: inotify where there is
one, a cheap stat poll everywhere.

resolv.conf changes in three ways, and each must be seen:

- rewritten in place (NetworkManager, a VPN client, a bind-mounted file such as
  `ip netns exec`'s): the file's own inode is modified;
- replaced by rename (systemd-resolved, resolvconf, editors): a new inode
  appears in the directory, often behind a symlink (`/etc/resolv.conf` ->
  `/run/systemd/resolve/stub-resolv.conf`);
- the symlink itself re-pointed.

So inotify watches the file's inode, the directory of the path and the
directory of every symlink hop up to the target, and re-arms after each event
(the target may be a new inode). The events are not parsed: any of them only
schedules a check, and the check compares a stat signature (device, inode,
size, mtime, ctime) of the path as it resolves now. Without inotify (macOS, no
libc) the same check runs every `poll_interval`; with inotify it still runs
every `safety_interval`, for changes inotify cannot see (network file
systems, a new mount over the file).

Linux-only pieces (ctypes' inotify calls) are looked up when a watcher starts,
never at import.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable

log = logging.getLogger("pyvpnkit")

Signature = tuple[int, int, int, int, int] | None

# IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
# | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_MASK = 0x002 | 0x004 | 0x008 | 0x040 | 0x080 | 0x100 | 0x200 | 0x400 | 0x800
_SETTLE = 0.05  # after an event, let a truncate-then-write finish before reading


def signature(path: str) -> Signature:
    """What changes when the file (through its symlinks) changes; None: missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def watched_paths(path: str) -> list[str]:
    """The directory of `path` and of each symlink hop, then the final target."""
    dirs: list[str] = []
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own symlink limit
        dirs.append(os.path.dirname(current))
        try:
            link = os.readlink(current)
        except OSError:
            break
        current = os.path.normpath(os.path.join(os.path.dirname(current), link))
    return [*dict.fromkeys(dirs), current]


class _Inotify:
    """One inotify descriptor; `None` from `open` where the system has none."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self.fd = fd

    @classmethod
    def open(cls) -> _Inotify | None:
        try:  # the interpreter's own symbols include libc's (find_library runs ldconfig)
            libc = ctypes.CDLL(None, use_errno=True)
            init = libc.inotify_init1
        except (OSError, AttributeError):
            return None
        fd = int(init(os.O_NONBLOCK | os.O_CLOEXEC))
        return cls(libc, fd) if fd >= 0 else None

    def add(self, path: str) -> bool:
        return int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), _MASK)) >= 0

    def close(self) -> None:
        os.close(self.fd)


class FileWatcher:
    """Calls `changed()` soon after `path` may have new contents (and once at start)."""

    def __init__(
        self,
        path: str,
        changed: Callable[[], None],
        *,
        poll_interval: float = 1.0,
        safety_interval: float = 10.0,
        use_inotify: bool = True,
    ) -> None:
        self.path = path
        self._changed = changed
        self.poll_interval = poll_interval
        self.safety_interval = safety_interval
        self._use_inotify = use_inotify
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inotify: _Inotify | None = None
        self._signature: Signature | bool = False  # False: not looked at yet
        self._poll: asyncio.TimerHandle | None = None
        self._settle: asyncio.TimerHandle | None = None

    @property
    def mode(self) -> str:
        return "inotify" if self._inotify is not None else "poll"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm()
        self._check()

    def close(self) -> None:
        for handle in (self._poll, self._settle):
            if handle is not None:
                handle.cancel()
        self._poll = self._settle = None
        self._disarm()
        self._loop = None

    # -- inotify -------------------------------------------------------------------

    def _arm(self) -> None:
        """(Re)create the watches for the path as it resolves now."""
        self._disarm()
        if not self._use_inotify or self._loop is None:
            return
        inotify = _Inotify.open()
        if inotify is None:
            self._use_inotify = False
            log.debug("%s: no inotify, polling every %g s", self.path, self.poll_interval)
            return
        watched = [p for p in watched_paths(self.path) if inotify.add(p)]
        if not watched:
            inotify.close()
            return
        self._inotify = inotify
        self._loop.add_reader(inotify.fd, self._on_event)

    def _disarm(self) -> None:
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None

    def _on_event(self) -> None:
        if self._inotify is None or self._loop is None:
            return
        try:
            while os.read(self._inotify.fd, 4096):
                pass  # the events only say "look": the check decides
        except (BlockingIOError, InterruptedError):
            pass
        if self._settle is None:
            self._settle = self._loop.call_later(_SETTLE, self._after_event)

    def _after_event(self) -> None:
        self._settle = None
        self._arm()  # the file may be a new inode, the symlink may point elsewhere
        self._check()

    # -- the check -----------------------------------------------------------------

    def _check(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        if self._loop is None:
            return
        current = signature(self.path)
        if current != self._signature:
            self._signature = current
            self._changed()
        interval = self.safety_interval if self._inotify is not None else self.poll_interval
        self._poll = self._loop.call_later(interval, self._check)


class PolledFile:
    """A configuration file reloaded when it changes, as vpnkit watches its files.

    ``load(text)`` gets the new contents ("" once the file is gone). Start-up
    read the file already, so the first look only notes it.
    """

    def __init__(self, path: str, load: Callable[[str], None], interval: float = 1.0) -> None:
        self.path = path
        self._load = load
        self._first = True
        self._watcher = FileWatcher(path, self._changed, poll_interval=interval)

    def _changed(self) -> None:
        if self._first:
            self._first = False
        else:
            self._load(read_text(self.path) or "")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher.start(loop)

    def close(self) -> None:
        self._watcher.close()


def read_text(path: str) -> str | None:
    """The file's text, or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


__all__ = ["FileWatcher", "PolledFile", "read_text", "signature", "watched_paths"]
