"""What --enable-sandbox and --enable-seccomp apply after set-up, and nothing more.

Set-up is done when they run: the TAP is open, the API socket bound, the
target watched. Both set PR_SET_NO_NEW_PRIVS (nothing the process could
execute gains privileges). Then:

- --enable-sandbox: when running with capabilities (as root), every one is
  dropped from all sets and the bounding set except CAP_NET_BIND_SERVICE
  (publishing ports below 1024) and CAP_NET_RAW (ICMP echo where ping
  sockets are not allowed); and where the kernel has Landlock, no writes to
  the filesystem and no exec (runtime/landlock.py; a warning when the
  kernel lacks it). slirp4netns instead pivots into an empty root; pyvpnkit
  rereads files and imports lazily, so reads stay.
- --enable-seccomp: runtime/seccomp.py's filter, through libseccomp (EPERM
  where slirp4netns kills the process).

Capabilities, no_new_privs and Landlock belong to a thread, so confine()
refuses to run once the process has more than one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os

from pyvpnkit.runtime import landlock, seccomp, sysns

CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
KEPT = (1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_RAW)
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
LINUX_CAPABILITY_VERSION_3 = 0x20080522

log = logging.getLogger("pyvpnkit.frontends.slirp4netns")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capget() -> tuple[int, int]:
    """(effective, permitted) as 64-bit masks."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if sysns.libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    effective = data[0].effective | data[1].effective << 32
    permitted = data[0].permitted | data[1].permitted << 32
    return effective, permitted


def _capset(mask: int) -> None:
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        part = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i] = _CapData(part, part, 0)
    if sysns.libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _drop_capabilities() -> None:
    _effective, permitted = _capget()
    if permitted == 0:
        return  # an ordinary user: nothing to drop
    with open(CAP_LAST_CAP_FILE, encoding="ascii") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if not KEPT & (1 << cap):
            sysns.libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
    sysns.libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    _capset(permitted & KEPT)


def confine(sandbox: bool, filter_calls: bool, api_socket: str | None = None) -> list[str]:
    """Apply what the flags ask; returns what was applied, for the log.

    Raises OSError when something asked for cannot be applied, except
    Landlock, which applies only where the kernel has it (the log says so).
    """
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise OSError(errno.EBUSY, f"{threads} threads run: confinement must come before any")
    sysns.set_no_new_privs()
    applied = ["no_new_privs"]
    if sandbox:
        _drop_capabilities()
        _effective, permitted = _capget()
        applied.append(f"permitted capabilities {permitted:#x}")
        version, why = landlock.abi()
        if version:
            keep = [os.path.dirname(os.path.abspath(api_socket))] if api_socket else []
            applied.append(landlock.restrict(version, keep))
        else:
            log.warning("sandbox: Landlock %s: filesystem writes stay allowed", why)
            applied.append(f"no Landlock ({why})")
    if filter_calls:
        applied.append("seccomp refuses " + " ".join(seccomp.install()))
    return applied
