"""Start-up latency: how long a launcher waits for pyvpnkit-slirp4netns and pyvpnkit exec.

Two measures, each against a reference run in the same session, alternating
so that load from other work falls on both alike (quote the ratio):

- tap: from starting `HELPER PID tap0` to tap0 existing in PID's network
  namespace. A thread of this process joins that namespace (setns is per
  thread for network namespaces) and polls if_nametoindex. The reference is
  Debian's slirp4netns; the target of issue 21 is at most 5 times its time.
  Beside it, the helper's own interpreter running a one-line script (with
  its site, as the helper): the floor that no change of ours goes under.
- exec: from starting `pyvpnkit exec -- CMD` to CMD running (it writes to a
  pipe), against `unshare -rn CMD` (the bare namespace, no stack).

Needs root (the poller joins other namespaces) and slirp4netns. Everything
stays in namespaces made here; nothing goes on the network.

    python3 bench/startup.py [--runs 15] [--helper pyvpnkit-slirp4netns]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def _tap_appears(pid: int, name: str, timeout: float = 10.0) -> float:
    """perf_counter() when NAME exists in PID's network namespace (a thread polls there)."""
    seen: list[float] = []

    def poll() -> None:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            try:
                socket.if_nametoindex(name)
            except OSError:
                time.sleep(0.0002)  # leave the CPU to the helper starting up
                continue
            seen.append(time.perf_counter())
            return

    thread = threading.Thread(target=poll)
    thread.start()
    thread.join()
    if not seen:
        raise RuntimeError(f"{name} did not appear in {timeout} s")
    return seen[0]


def tap_latency(helper: list[str]) -> float:
    """Milliseconds from starting HELPER to its TAP in a fresh namespace."""
    target = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        while os.readlink(f"/proc/{target.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            time.sleep(0.001)
        start = time.perf_counter()
        proc = subprocess.Popen([*helper, str(target.pid), "tap0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return (_tap_appears(target.pid, "tap0") - start) * 1000
        finally:
            proc.kill()
            proc.wait()
    finally:
        target.kill()
        target.wait()


def _pipe_latency(command: Callable[[int], list[str]], **popen: Any) -> float:
    """Milliseconds from starting command(FD) to its first byte on the pipe FD."""
    read, write = os.pipe()
    start = time.perf_counter()
    proc = subprocess.Popen(command(write), pass_fds=[write], **popen)
    os.close(write)
    os.read(read, 1)
    ms = (time.perf_counter() - start) * 1000
    os.close(read)
    proc.wait()
    return ms


def exec_latency(launcher: list[str]) -> float:
    """Milliseconds from starting LAUNCHER ... -- CMD to CMD running."""
    return _pipe_latency(lambda fd: [*launcher, "sh", "-c", f"echo >&{fd}"],
                         stdout=subprocess.DEVNULL)


def interpreter_latency(python: str) -> float:
    """Milliseconds from starting PYTHON (with its site, as the helper's script) to its code.

    The floor under the helper's TAP time: what is left above it is ours.
    """
    return _pipe_latency(lambda fd: [python, "-c", f"import os; os.write({fd}, b'x')"])


def _interpreter(script: str) -> str:
    """The interpreter on SCRIPT's #! line (the venv's python for pip-installed scripts)."""
    with open(script, "rb") as f:
        line = f.readline()
    return line[2:].decode().split()[0] if line.startswith(b"#!") else sys.executable


def _median(label: str, values: list[float]) -> float:
    m = statistics.median(values)
    print(f"{label:34s} median {m:7.1f} ms  min {min(values):6.1f}  max {max(values):6.1f}")
    return m


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--helper", default="pyvpnkit-slirp4netns")
    parser.add_argument("--pyvpnkit", default="pyvpnkit")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("startup.py: needs root (the poller joins the helpers' namespaces)")
    ours_helper = [shutil.which(args.helper) or args.helper]
    theirs = [shutil.which("slirp4netns") or "slirp4netns"]
    python = _interpreter(ours_helper[0])
    ours, ref, execs, bare, interp = [], [], [], [], []
    exec_cmd = [shutil.which(args.pyvpnkit) or args.pyvpnkit, "exec", "--"]
    for _ in range(args.runs):
        ref.append(tap_latency(theirs))
        ours.append(tap_latency(ours_helper))
        interp.append(interpreter_latency(python))
        bare.append(exec_latency(["unshare", "-rn"]))
        execs.append(exec_latency(exec_cmd))
    s4 = _median("slirp4netns: TAP exists", ref)
    ov = _median(f"{args.helper}: TAP exists", ours)
    _median("its python, site, no code: runs", interp)
    un = _median("unshare -rn: command runs", bare)
    ex = _median("pyvpnkit exec: command runs", execs)
    print(f"ratio TAP {ov / s4:.1f}x slirp4netns (target <= 5x); "
          f"exec {ex - un:.1f} ms more than unshare -rn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
