"""Thin ctypes wrappers for the Linux calls Python 3.11 lacks (unshare, setns, mount, prctl)."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 0x1000

# One handle on the C library for every ctypes call in the package (sandbox, landlock too):
# the interpreter's own symbols, which include libc's. find_library("c") would run
# ldconfig, 15 ms of a launcher's start-up.
libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def unshare_as_root(flags: int) -> None:
    """A new user namespace (plus FLAGS' namespaces) in which the caller is root.

    The caller's uid and gid map one to one to 0, as `unshare -r` does: a
    process may write a single mapping of its own ids into its new
    namespace, after denying setgroups(2). Set-up steps are named in errors.
    """
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | flags)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                       ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
            f.write(text)


def mount(source: str, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies."""
    _check(libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig), 0, 0, 0), "prctl")


def set_no_new_privs() -> None:
    """Nothing this process executes may gain privileges (setuid bits, file caps)."""
    _check(libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), 0, 0, 0), "prctl")


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc() -> None:
    """Keep glibc from mapping and unmapping memory for every 64-256 KB buffer.

    Host reads and TCP segments are large, short-lived objects. With glibc's
    defaults they cycle through mmap/munmap or heap trimming, and every new
    buffer then page-faults on first touch (measured: ~25% of a download's
    time). Fixed thresholds keep that memory in the heap for reuse.
    """
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not glibc
        return
    mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(4 << 20))
    mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(64 << 20))
