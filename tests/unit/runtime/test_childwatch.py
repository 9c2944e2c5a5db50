"""watch_exit: the pidfd path and the polling fallback (kernels before 5.3, valgrind)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys

import pytest

from pyvpnkit.runtime import childwatch


def _no_pidfd(pid: int) -> int:
    raise OSError(errno.ENOSYS, "Function not implemented")


async def _wait_for_exit(child: bool) -> bool:
    """Start a short process, watch it; told of its exit?"""
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    pid = proc.pid
    if not child:  # someone else's process: its parent (here a thread) reaps it
        loop.run_in_executor(None, proc.wait)
    gone = asyncio.Event()
    stop = childwatch.watch_exit(loop, pid, gone.set, child=child)
    assert not gone.is_set()
    try:
        await asyncio.wait_for(gone.wait(), 10)
    finally:
        stop()
        stop()  # twice is harmless
    if child:  # WNOWAIT: the status is still there for the caller
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    return gone.is_set()


@pytest.mark.parametrize("pidfd", [True, False])
@pytest.mark.parametrize("child", [True, False])
def test_told_once_the_process_exits(
    monkeypatch: pytest.MonkeyPatch, pidfd: bool, child: bool
) -> None:
    if not pidfd:
        monkeypatch.setattr(childwatch.os, "pidfd_open", _no_pidfd)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd_open here")
    assert asyncio.run(_wait_for_exit(child))


@pytest.mark.parametrize("pidfd", [True, False])
def test_a_process_already_gone_raises(monkeypatch: pytest.MonkeyPatch, pidfd: bool) -> None:
    if not pidfd:
        monkeypatch.setattr(childwatch.os, "pidfd_open", _no_pidfd)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd_open here")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()

    async def watch() -> None:
        childwatch.watch_exit(asyncio.get_running_loop(), proc.pid, lambda: None)

    with pytest.raises(ProcessLookupError):
        asyncio.run(watch())
