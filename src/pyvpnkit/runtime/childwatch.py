"""Being told when a process exits: a pidfd where the kernel has one, else a poll.

`pidfd_open` came with Linux 5.3; older kernels (and valgrind, which does not
know the system call) refuse it with ENOSYS. The fallback looks every
POLL_SECONDS: at our own child with `waitid(WNOWAIT)`, which leaves the
status for the caller's `waitpid`, and at any other process with signal 0.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable

POLL_SECONDS = 0.1


def watch_exit(
    loop: asyncio.AbstractEventLoop, pid: int, gone: Callable[[], None], child: bool = True
) -> Callable[[], None]:
    """Call `gone` once when `pid` exits; returns the function that stops watching.

    Raises OSError (ESRCH) if the process does not exist, as `pidfd_open` does.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter said no
            raise
        return _poll(loop, pid, gone, child)

    closed = False

    def stop() -> None:
        nonlocal closed
        if not closed:
            closed = True
            loop.remove_reader(pidfd)
            os.close(pidfd)

    loop.add_reader(pidfd, gone)
    return stop


def _exited(pid: int, child: bool) -> bool:
    try:
        if child:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        os.kill(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        return True  # reaped already, or gone
    except PermissionError:
        return False  # alive, someone else's
    return False


def _poll(
    loop: asyncio.AbstractEventLoop, pid: int, gone: Callable[[], None], child: bool
) -> Callable[[], None]:
    if _exited(pid, child):
        raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle
        if _exited(pid, child):
            handle = None
            gone()
        else:
            handle = loop.call_later(POLL_SECONDS, check)

    def stop() -> None:
        nonlocal handle
        if handle is not None:
            handle.cancel()
            handle = None

    handle = loop.call_later(POLL_SECONDS, check)
    return stop
