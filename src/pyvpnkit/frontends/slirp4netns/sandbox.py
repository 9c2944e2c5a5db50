"""What --enable-sandbox and --enable-seccomp apply after set-up, and nothing more.

Set-up is done when they run: the TAP is open, the API socket bound, the
target watched. Both set PR_SET_NO_NEW_PRIVS (nothing the process could
execute gains privileges). Then:

- --enable-sandbox, as slirp4netns's: a new mount namespace (and user
  namespace without privileges) whose root is an empty read-only tmpfs with
  only /etc and /run (runtime/emptyroot.py), and every capability dropped
  from all sets and the bounding set but CAP_NET_BIND_SERVICE (as root,
  CAP_NET_RAW too when ICMP echo needs a raw socket because ping sockets are
  not allowed). On top, where the kernel has Landlock, no writes to the
  filesystem and no exec (runtime/landlock.py; a warning when it lacks it).
  Python cannot import from disk after the pivot: the modules the stack may
  load lazily are imported first (preload).
- --enable-seccomp: runtime/seccomp.py's filter, through libseccomp (EPERM
  where slirp4netns kills the process), loaded before the pivot hides it.

Capabilities, no_new_privs and Landlock belong to a thread, and a user
namespace is refused to a threaded process, so confine() refuses to run
once the process has more than one.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import logging
import os
import pkgutil
import sys

from pyvpnkit.runtime import emptyroot, landlock, seccomp, sysns

CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
# What the stack may import after start-up: all of these, loaded before the pivot.
PRELOAD_PACKAGES = ("pyvpnkit.core", "pyvpnkit.wire", "pyvpnkit.runtime", "pyvpnkit.links",
                    "pyvpnkit.app", "pyvpnkit.frontends.slirp4netns")
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


def _drop_capabilities(kept: int, last: int) -> None:
    _effective, permitted = _capget()
    if permitted == 0:
        return  # an ordinary user: nothing to drop
    for cap in range(last + 1):
        if not kept & (1 << cap):
            sysns.libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
    sysns.libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    _capset(permitted & kept)


def preload() -> int:
    """Import every module the stack could import lazily; returns how many are loaded.

    dnspython loads a record type's module the first time it meets the type.
    """
    import encodings.idna  # noqa: F401 - names with non-ASCII labels

    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    for package in PRELOAD_PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if not info.name.endswith(".__main__"):
                importlib.import_module(info.name)
    for rdclass in (dns.rdataclass.IN, dns.rdataclass.ANY):
        for rdtype in dns.rdatatype.RdataType:
            dns.rdata.get_rdata_class(rdclass, rdtype)  # type: ignore[no-untyped-call]
    return len(sys.modules)


def confine(sandbox: bool, filter_calls: bool, api_dir: int | None = None,
            keep_raw: bool = False) -> list[str]:
    """Apply what the flags ask; returns what was applied, for the log.

    ``api_dir``: the API socket's directory (an O_PATH fd), where removing
    the socket stays allowed. ``keep_raw``: keep CAP_NET_RAW if it is held
    (ICMP echo through a raw socket). Raises OSError when something asked
    for cannot be applied, except Landlock, which applies only where the
    kernel has it (the log says so).
    """
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise OSError(errno.EBUSY, f"{threads} threads run: confinement must come before any")
    applied = []
    if filter_calls:
        seccomp.load_library()  # stays loaded: install() finds it after the pivot
    if sandbox:
        applied.append(f"{preload()} modules loaded")
        with open(CAP_LAST_CAP_FILE, encoding="ascii") as f:
            last = int(f.read())
        new_userns = emptyroot.enter()
        applied.append("root: an empty tmpfs with /etc and /run, in a new mount namespace"
                       + (" and user namespace" if new_userns else ""))
        keep_raw = keep_raw and not new_userns  # raw sockets are the host's: not ours there
    sysns.set_no_new_privs()
    applied.append("no_new_privs")
    if sandbox:
        kept = 1 << CAP_NET_BIND_SERVICE | (1 << CAP_NET_RAW if keep_raw else 0)
        _drop_capabilities(kept, last)
        _effective, permitted = _capget()
        applied.append(f"permitted capabilities {permitted:#x}")
        version, why = landlock.abi()
        if version:
            applied.append(landlock.restrict(version, [] if api_dir is None else [api_dir]))
        else:
            log.warning("sandbox: Landlock %s: filesystem writes stay allowed", why)
            applied.append(f"no Landlock ({why})")
    if filter_calls:
        applied.append("seccomp refuses " + " ".join(seccomp.install()))
    return applied
