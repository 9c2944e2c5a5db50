"""What --enable-sandbox and --enable-seccomp apply, and nothing more.

slirp4netns's sandbox pivots into an empty root and installs a seccomp
filter. pyvpnkit imports code lazily and rereads files (hosts, resolv.conf)
while it runs, so it cannot drop the filesystem; what it applies after
set-up (TAP opened, API socket bound) is:

- PR_SET_NO_NEW_PRIVS: nothing the process could execute gains privileges;
- when running with capabilities (as root): every capability is dropped
  from the effective, permitted, inheritable and ambient sets and from the
  bounding set, except CAP_NET_BIND_SERVICE (publishing ports below 1024)
  and CAP_NET_RAW (ICMP echo where ping sockets are not allowed).

No seccomp filter is installed: no maintained Python binding for
libseccomp fits (Debian's python3-seccomp is not usable from a venv).
`--enable-seccomp` therefore applies the same as `--enable-sandbox`.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from pyvpnkit.runtime import sysns

CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
KEPT = (1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_RAW)
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


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
    if _libc.capget(ctypes.byref(header), data) != 0:
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
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _drop_capabilities() -> None:
    _effective, permitted = _capget()
    if permitted == 0:
        return  # an ordinary user: nothing to drop
    with open(CAP_LAST_CAP_FILE, encoding="ascii") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if not KEPT & (1 << cap):
            _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    _capset(permitted & KEPT)


def confine() -> list[str]:
    """Apply the sandbox; returns what was applied, for the log."""
    sysns.set_no_new_privs()
    _drop_capabilities()
    _effective, permitted = _capget()
    return ["no_new_privs", f"permitted capabilities {permitted:#x}"]
